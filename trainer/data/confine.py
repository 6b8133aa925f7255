"""Keeping a job's reads under the data roots, and class lists that name only folders. Standard
library only (no torch, no numpy): the control plane checks submitted configs with it too.

The service passes its data roots (``SIMCLR_DATA_ROOTS``, resolved) in the job spec; the worker
resolves every folder, shard and file it opens (symbolic links followed, ``..`` collapsed) and
refuses one that does not lie under a root. ``roots=None`` means unconfined (runs started by hand).

Errors name paths and counts, never what a file holds: a class list or a manifest may be any file
the job was pointed at, and the service hands the job's log back to whoever submitted it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath

# A class list is a few hundred kB at most (ImageNet-21k's 21,841 names: about 220 kB).
MAX_CLASS_LIST_BYTES = 4 << 20


def real_roots(roots: Iterable[str | os.PathLike[str]] | None) -> tuple[Path, ...] | None:
    """The real paths of ``roots`` (None stays None: unconfined)."""
    if roots is None:
        return None
    return tuple(Path(os.path.realpath(root)) for root in roots)


def is_under(real: Path, roots: tuple[Path, ...]) -> bool:
    """Whether the already resolved ``real`` lies in (or is) one of the resolved ``roots``."""
    return any(real.is_relative_to(root) for root in roots)


def confined(
    path: str | os.PathLike[str],
    roots: Iterable[str | os.PathLike[str]] | None,
    what: str = "path",
    label: str | None = None,
) -> Path:
    """The real path of ``path`` (symbolic links followed, ``..`` collapsed; it need not exist).

    With ``roots`` (None: unconfined) it must lie under one of them, else ``PermissionError``
    naming ``what``, the path (or ``label`` in its place, for a path built from a file's
    contents) and the roots."""
    return confined_to(path, real_roots(roots), what, label)


def confined_to(
    path: str | os.PathLike[str],
    resolved: tuple[Path, ...] | None,
    what: str = "path",
    label: str | None = None,
) -> Path:
    """``confined`` with the roots already resolved by ``real_roots`` (per-file checks)."""
    real = Path(os.path.realpath(path))
    if resolved is not None and not is_under(real, resolved):
        if label is None:
            label = str(path)
            if str(real) != os.path.abspath(path):
                label += f" (resolves to {real})"
        raise PermissionError(
            f"{what} {label} is outside the data roots "
            f"({', '.join(map(str, resolved)) or 'none'}; SIMCLR_DATA_ROOTS)"
        )
    return real


def class_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a class folder name (a path, ``..``, NUL), or None when it can."""
    if "\0" in name:
        return "holds a NUL character"
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute():
        return "is an absolute path"
    if "/" in name or "\\" in name:
        return "holds a path separator ('/' or '\\')"
    if name == "..":
        return "is '..'"
    return None


class ClassList(list):
    """Class folder names read from a class list file, in its order; ``lines[i]`` is the line of
    ``self[i]`` in the file ``source``. Errors about these names give their line numbers, never the
    names themselves (the file may be anything the job was pointed at)."""

    def __init__(self, names: Iterable[str], lines: Iterable[int], source: str):
        super().__init__(names)
        self.lines = list(lines)
        self.source = source


def parse_class_list(text: str, source: str) -> ClassList:
    """Class folder names, one per line (blank lines and ``#`` comments ignored), checked: each is a
    folder name (not a path, not ``..``), none repeats, at least one. ``source`` names the file in
    errors, which give line numbers, never a line's content."""
    names: list[str] = []
    lines: list[int] = []
    seen: dict[str, int] = {}
    repeated: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        problem = class_name_problem(name)
        if problem is not None:
            raise ValueError(
                f"class list {source} line {number}: the class name {problem}; a class name must "
                "be the name of a folder under the dataset root"
            )
        if name in seen:
            repeated.append(number)
            continue
        seen[name] = number
        names.append(name)
        lines.append(number)
    if repeated:
        raise ValueError(
            f"class list {source} repeats a class name on {line_numbers(repeated)} "
            "(each class must be listed once)"
        )
    if not names:
        raise ValueError(f"class list {source} names no class")
    return ClassList(names, lines, source)


def read_class_list(
    path: str | os.PathLike[str], roots: Iterable[str | os.PathLike[str]] | None = None
) -> ClassList:
    """The checked class list at ``path`` (``parse_class_list``), which must lie under ``roots``
    (None: unconfined), be a regular file of at most ``MAX_CLASS_LIST_BYTES`` and be UTF-8 text."""
    text = read_listing(path, roots, "class list", MAX_CLASS_LIST_BYTES)
    return parse_class_list(text, str(path))


def read_listing(
    path: str | os.PathLike[str], roots: Iterable[str | os.PathLike[str]] | None, what: str,
    max_bytes: int,
) -> str:  # fmt: skip
    """The UTF-8 text of the file at ``path`` (a class list, a list of images), which must lie
    under ``roots`` (None: unconfined) and be a regular file of at most ``max_bytes``; errors
    name ``what`` and the path, never the content."""
    real = confined(path, roots, what)
    if not real.is_file():
        raise FileNotFoundError(f"{what} {path} not found (or not a regular file)")
    with real.open("rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{what} {path} is larger than {max_bytes >> 20} MiB: not a {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not UTF-8 text: not a {what}") from None


def line_numbers(numbers: list[int], shown: int = 10) -> str:
    """How errors cite lines of a class list: ``line 3``, ``lines 3, 7, 9`` (the first ``shown``
    of them, then a count)."""
    head = ", ".join(map(str, numbers[:shown]))
    more = f" and {len(numbers) - shown} more" if len(numbers) > shown else ""
    return f"line{'s' if len(numbers) > 1 else ''} {head}{more}"
