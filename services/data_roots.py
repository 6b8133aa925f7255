"""Dataset paths of a submitted config, confined to the service's data roots (``SIMCLR_DATA_ROOTS``).

At submit, every dataset ``root`` and ``class_list`` of a config is resolved (symbolic links
followed, ``..`` collapsed) and must lie under a data root; the stored config keeps the resolved
paths. A class list is read here too (the data roots are shared storage, so the API host sees it)
and refused if a name is a path, ``..`` or empty of names. The workers check again what they open
(``trainer.data.confine``), against the roots the dispatcher puts in the job spec. Errors name the
field, the path and a line number, never what a file holds. No torch here.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from services.kinds import ConfigError, dataset_roots
from trainer.data.confine import is_under, read_class_list, real_roots


def confine_config(config: BaseModel, allowed: list[str], loc: tuple[str, ...]) -> BaseModel:
    """A copy of ``config`` whose dataset ``root`` and ``class_list`` paths (however deeply nested)
    are their real paths, each under one of ``allowed``; ``loc`` is where ``config`` sits in the
    request body. ``ConfigError`` (422) names the field of a path outside the roots, of a class
    list the service cannot read, or of one with a name that is not a folder name (by line)."""
    roots = real_roots(allowed) or ()
    shown_roots = f"{', '.join(map(str, roots)) or 'none'}; SIMCLR_DATA_ROOTS"
    for field, path in list(dataset_roots(config, loc)):
        try:  # not strict: a dataset root may be made before the job runs
            real = Path(path).resolve()
        except (OSError, ValueError):  # a NUL character, a loop of links
            raise _refused(field, f"{path!r} is not a usable path") from None
        if not is_under(real, roots):
            raise _refused(field, f"{path!r} is not under the service's data roots ({shown_roots})")
        if field.endswith(".class_list"):
            try:
                read_class_list(real, roots)
            except OSError:
                raise _refused(
                    field,
                    f"class list {path!r} not found under the data roots ({shown_roots}): the "
                    "service must be able to read it (the data roots are shared storage)",
                ) from None
            except ValueError as error:  # its messages give line numbers, never the content
                raise _refused(field, str(error)) from None
        config = _replace(config, field.split(".")[len(loc) :], str(real))
    return config


def _refused(field: str, msg: str) -> ConfigError:
    return ConfigError([{"loc": ("body", *field.split(".")), "type": "data_root", "msg": msg}])


def _replace(model: BaseModel, attributes: list[str], value: str) -> BaseModel:
    """A copy of ``model`` with the field at ``attributes`` (a path of nested fields) set."""
    first, *rest = attributes
    new = _replace(getattr(model, first), rest, value) if rest else value
    return model.model_copy(update={first: new})
