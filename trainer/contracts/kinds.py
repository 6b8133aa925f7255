"""The registry of job kinds: one row per kind, and everything else derives from it.

A row names the kind, its config model (pydantic, validated by the service and again on the
workers), its worker entry (``module:attribute``, the attribute possibly dotted, as in a class's
method; every entry has one signature, ``(spec, session)`` over a ``TrainingSession``; imported
on the cluster and never by the service, so that this module and everything the service imports
stay free of torch), its role (it pretrains an encoder, evaluates one, or trains a generative
model), its failure policy (how often Ray Train restarts its worker group; None: the job spec's
default) and whether it reads a checkpoint of another job. Adding a kind is one config model,
one worker module and one row; from the rows come the kinds ``JobSpec`` takes, those
``POST /v1/jobs`` takes (and documents), those an evaluation may score, the failure policy in
each job spec and the driver's dispatch (``tests/services/test_kinds.py`` adds a toy kind in the
test alone and runs it through all of them).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from trainer.contracts.config import (
    FinetuneConfig,
    FinetuneSettings,
    KnnConfig,
    KnnSettings,
    LinearProbeConfig,
    LinearProbeSettings,
    SimCLRConfig,
)
from trainer.contracts.generative import (
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
    # an evaluation: the name POST /v1/evaluations takes for it, and the part of its config a
    # user chooses there (the service fills in the rest: the checkpoint and the data set)
    protocol: str | None = None
    settings: type[BaseModel] | None = None

    def entry(self) -> Callable[[Any, Any], None]:
        """The worker entry ``worker`` names, imported: ``entry(spec, session)`` runs the job on
        one rank (``spec`` its ``JobSpec``, ``session`` a ``trainer.session.TrainingSession``).
        Called on the workers' side only: the worker modules import torch."""
        module, _, attribute = self.worker.partition(":")
        return functools.reduce(getattr, attribute.split("."), importlib.import_module(module))


KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Add ``kind`` to the registry (a kind's name is taken once)."""
    if kind.name in KINDS:
        raise ValueError(f"job kind {kind.name!r} is registered already")
    KINDS[kind.name] = kind
    return kind


def evaluation(protocol: str) -> Kind:
    """The evaluation kind of ``protocol``; ``KeyError`` when no kind has it."""
    for kind in KINDS.values():
        if kind.role == "evaluate" and kind.protocol == protocol:
            return kind
    raise KeyError(protocol)


def protocols() -> tuple[str, ...]:
    """The protocols of the registered evaluation kinds."""
    return tuple(k.protocol for k in KINDS.values() if k.role == "evaluate" and k.protocol)


def kinds(*roles: Role) -> tuple[str, ...]:
    """The names of the registered kinds with one of ``roles`` (all kinds when none is given)."""
    return tuple(name for name, kind in KINDS.items() if not roles or kind.role in roles)


for row in (
    Kind("simclr", SimCLRConfig, "trainer.simclr_loop:simclr_worker", "pretrain"),
    # the linear and kNN evaluations are short and restart from scratch: their errors (a corrupt
    # checkpoint) are not worth repeating; the training kinds resume from their checkpoint after a worker failure
    Kind(
        "linear_probe",
        LinearProbeConfig,
        "trainer.linear_probe:linear_probe_worker",
        "evaluate",
        max_failures=0,
        reads_checkpoint=True,
        protocol="linear",
        settings=LinearProbeSettings,
    ),
    Kind(
        "knn",
        KnnConfig,
        "trainer.knn:knn_worker",
        "evaluate",
        max_failures=0,
        reads_checkpoint=True,
        protocol="knn",
        settings=KnnSettings,
    ),
    # fine-tuning trains for hours at ImageNet scale: it resumes from its epoch checkpoints
    Kind(
        "finetune",
        FinetuneConfig,
        "trainer.finetune:finetune_worker",
        "evaluate",
        reads_checkpoint=True,
        protocol="finetune",
        settings=FinetuneSettings,
    ),
    # a generative kind's entry is its task's: trainer.generative.tasks.Task.worker
    Kind("ddpm", DDPMConfig, "trainer.generative.tasks:DDPMTask.worker", "generate"),
    Kind("vae", VAEConfig, "trainer.generative.tasks:VAETask.worker", "generate"),
    Kind("gan", GANConfig, "trainer.generative.tasks:GANTask.worker", "generate"),
    Kind(
        "diffusevae", DiffuseVAEConfig, "trainer.generative.tasks:DiffuseVAETask.worker", "generate"
    ),
    Kind("flow", FlowConfig, "trainer.generative.tasks:FlowTask.worker", "generate"),
):
    register(row)
del row
