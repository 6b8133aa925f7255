"""The registry of job kinds: one row per kind, and everything else derives from it.

A row names the kind, its config model (pydantic, validated by the service and again on the
workers), its worker entry (``module:function``, imported by the driver on the cluster and never
by the service, so that this module and everything the service imports stay free of torch), its role (it
pretrains an encoder, evaluates one, or trains a generative model), its failure policy (how often
Ray Train restarts its worker group; None: the job spec's default) and whether it reads a
checkpoint of another job. Adding a kind is one config model, one worker module and one row;
from the rows come the kinds ``JobSpec`` takes, those ``POST /v1/jobs`` takes (and documents),
those an evaluation may score, the failure policy in each job spec and the driver's dispatch
(``tests/services/test_kinds.py`` adds a toy kind in the test alone and runs it through all of them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from trainer.config import LinearProbeConfig, SimCLRConfig
from trainer.generative.config import (
    DDPMConfig,
    DiffuseVAEConfig,
    FlowConfig,
    GANConfig,
    VAEConfig,
)

Role = Literal["pretrain", "evaluate", "generate"]


@dataclass(frozen=True)
class Kind:
    name: str
    config: type[BaseModel]
    worker: str
    role: Role
    max_failures: int | None = None
    reads_checkpoint: bool = False


KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Add ``kind`` to the registry (a kind's name is taken once)."""
    if kind.name in KINDS:
        raise ValueError(f"job kind {kind.name!r} is registered already")
    KINDS[kind.name] = kind
    return kind


def kinds(*roles: Role) -> tuple[str, ...]:
    """The names of the registered kinds with one of ``roles`` (all kinds when none is given)."""
    return tuple(name for name, kind in KINDS.items() if not roles or kind.role in roles)


GENERATIVE_WORKER = "trainer.driver:generative_worker_loop"
for row in (
    Kind("simclr", SimCLRConfig, "trainer.driver:simclr_worker_loop", "pretrain"),
    # an evaluation is short and restarts from scratch: its errors (a corrupt checkpoint) are not
    # worth repeating; the training kinds resume from their checkpoint after a worker failure
    Kind(
        "linear_probe",
        LinearProbeConfig,
        "trainer.driver:linear_probe_worker_loop",
        "evaluate",
        max_failures=0,
        reads_checkpoint=True,
    ),
    Kind("ddpm", DDPMConfig, GENERATIVE_WORKER, "generate"),
    Kind("vae", VAEConfig, GENERATIVE_WORKER, "generate"),
    Kind("gan", GANConfig, GENERATIVE_WORKER, "generate"),
    Kind("diffusevae", DiffuseVAEConfig, GENERATIVE_WORKER, "generate"),
    Kind("flow", FlowConfig, GENERATIVE_WORKER, "generate"),
):
    register(row)
del row
