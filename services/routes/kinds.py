"""``/v1/kinds``: the kinds of job the service runs, each with its config's defaults and JSON
schema (what the console's submit page is built from)."""

from __future__ import annotations

import functools

from fastapi import APIRouter, Depends

from services.auth import require_api_token
from services.kinds import config_defaults
from services.schemas import KindOut
from trainer.contracts.kinds import KINDS

router = APIRouter(prefix="/v1", tags=["kinds"], dependencies=[Depends(require_api_token)])


@functools.cache
def _kind(name: str) -> KindOut:
    kind = KINDS[name]
    # an evaluation's config is what POST /v1/evaluations takes: its settings (the service fills
    # in the checkpoint and the data set)
    model = kind.settings if kind.role == "evaluate" and kind.settings else kind.config
    return KindOut(
        name=kind.name, role=kind.role, protocol=kind.protocol,
        defaults=config_defaults(model), config_schema=model.model_json_schema(),
    )  # fmt: skip


@router.get("/kinds", response_model=list[KindOut])
def list_kinds() -> list[KindOut]:
    """Every registered kind: ``pretrain`` and ``generate`` kinds go to ``POST /v1/jobs``,
    ``evaluate`` kinds to ``POST /v1/evaluations`` under their ``protocol``."""
    return [_kind(name) for name in KINDS]
