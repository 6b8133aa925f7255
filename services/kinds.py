"""Validating a job's config as its kind's model (the registry, ``trainer.contracts.kinds``), with errors
located in the request."""

from __future__ import annotations

from collections.abc import Iterator
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from trainer.contracts.config import DatasetConfig
from trainer.contracts.kinds import KINDS


class ConfigError(ValueError):
    """A config that its kind's model rejects; ``errors`` are pydantic's, located under ``config``."""

    def __init__(self, errors: list[dict[str, Any]]):
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


def validate_config(
    kind: str, config: dict[str, Any], loc: tuple[str, ...] = ("body", "config")
) -> BaseModel:
    """``config`` as the kind's model (extra fields forbidden, defaults filled in)."""
    return validate_model(KINDS[kind].config, config, loc)


def validate_model(model: type[BaseModel], data: dict[str, Any], loc: tuple[str, ...]) -> BaseModel:
    """``data`` as ``model``; errors located under ``loc`` in the request."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(
            [
                {"loc": (*loc, *e["loc"]), "msg": e["msg"], "type": e["type"]}
                for e in error.errors(include_url=False)
            ]
        ) from None


def config_defaults(model: type[BaseModel]) -> dict[str, Any]:
    """Every field of ``model`` as a submission that leaves it out gets it, ready for JSON. A
    required field has none: a required sub-config (the first model of a union) shows its own
    fields' defaults, any other required field is None."""
    defaults: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if not field.is_required():
            defaults[name] = to_jsonable_python(field.get_default(call_default_factory=True))
            continue
        union = get_origin(field.annotation) in (Union, UnionType)
        models = [
            member for member in (get_args(field.annotation) if union else (field.annotation,))
            if isinstance(member, type) and issubclass(member, BaseModel)
        ]  # fmt: skip
        defaults[name] = config_defaults(models[0]) if models else None
    return defaults


def dataset_roots(
    config: BaseModel, loc: tuple[str, ...] = ("config",)
) -> Iterator[tuple[str, str]]:
    """``(field location, path)`` of every dataset root and class list in ``config``, however
    deeply nested, and of every field marked ``json_schema_extra={"data_path": True}``: the
    paths a job reads on the cluster."""
    if isinstance(config, DatasetConfig):
        for field in ("root", "class_list"):
            if path := getattr(config, field):
                yield ".".join((*loc, field)), path
        return
    for name, field in type(config).model_fields.items():
        value = getattr(config, name)
        if isinstance(value, BaseModel):
            yield from dataset_roots(value, (*loc, name))
        elif (
            value
            and isinstance(field.json_schema_extra, dict)
            and field.json_schema_extra.get("data_path")
        ):  # a file the job reads beside its data set (a fine-tuning job's label subset)
            yield ".".join((*loc, name)), value
