"""Image folders without torch: listing the ImageFolder layout (confined to the data roots, see
``trainer.data.confine``), class lists, and the one JPEG/PNG decoder every image path uses (the
torch loader, the Ray Data decoder, the packer's check).

``decode_rgb`` is Pillow's libjpeg-turbo. A JPEG larger than needed is decoded at a reduced scale
in the DCT domain (``Image.draft``: 1/2, 1/4 or 1/8, several times faster than a full decode), then
resized so that its longer side is at most ``max_side``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from trainer.data.confine import (
    ClassList,
    class_name_problem,
    confined,
    confined_to,
    line_numbers,
    read_class_list,
    real_roots,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".gif", ".tif", ".tiff")
# What a file that is not a readable image raises while decoding.
DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError)


def decode_rgb(source: str | Path | bytes, max_side: int | None = None) -> np.ndarray:
    """uint8 (h, w, 3) of an image file or its bytes, the longer side at most ``max_side``."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(stream) as image:
        if max_side is not None:
            image.draft("RGB", (max_side, max_side))
        image = image.convert("RGB")
        if max_side is not None and max(image.size) > max_side:
            scale = max_side / max(image.size)
            new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(new_size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        return np.asarray(image).copy()


def list_images(
    root: Path,
    classes: list[str],
    roots: Iterable[str | os.PathLike[str]] | None = None,
) -> list[tuple[str, int]]:
    """``(path, label)`` of every image under ``root/<class>/`` (recursively), label = the class's
    position in ``classes``; paths sorted within each class.

    With ``roots`` (None: unconfined) the root, every class folder and every image file must
    resolve under one of them (a symbolic link pointing elsewhere is refused: ``PermissionError``),
    and the paths returned are the resolved ones. Classes read from a class list (``ClassList``)
    are cited in errors by their line in that file, never by name."""
    resolved = real_roots(roots)
    if resolved is not None:
        root = confined_to(root, resolved, "image folder")
    from_file = isinstance(classes, ClassList)
    for position, name in enumerate(classes):
        problem = None if from_file else class_name_problem(name)
        if problem is not None:
            raise ValueError(f"class {position} {problem}: not a class folder name under {root}")

    def cited(position: int) -> str:
        """How errors name a class: by its class list line when it came from a file."""
        if from_file:
            return f"the class on line {classes.lines[position]} of class list {classes.source}"
        return f"class folder {root / classes[position]}"

    missing = [position for position, name in enumerate(classes) if not (root / name).is_dir()]
    if missing:
        if from_file:
            lines = line_numbers([classes.lines[i] for i in missing])
            which = f"the classes on {lines} of class list {classes.source}"
        else:
            names = [classes[i] for i in missing]
            which = f"{', '.join(names[:10])}{' ...' if len(names) > 10 else ''}"
        raise FileNotFoundError(
            f"{len(missing)} of {len(classes)} class folders missing under {root}: {which}"
        )
    samples: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        folder = root / name
        if resolved is not None:
            label_text = f"of {cited(label)} (under {root})" if from_file else None
            folder = confined_to(folder, resolved, "class folder", label_text)
        found: list[tuple[str, str]] = []  # (the path as listed, the path to read)
        for path in folder.rglob("*"):
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if resolved is not None:
                shown = None
                if from_file:
                    shown = f"{path.relative_to(folder)} in the folder of {cited(label)}"
                real = confined_to(path, resolved, "image", shown)
                if real.is_file():
                    found.append((str(path), str(real)))
            elif path.is_file():
                found.append((str(path), str(path)))
        if not found:
            raise FileNotFoundError(
                f"{f'the folder of {cited(label)} under {root}' if from_file else f'class folder {folder}'} "
                f"holds no images "
                f"({', '.join(IMAGE_EXTENSIONS)})"
            )
        samples += [(real, label) for _, real in sorted(found)]
    return samples


def class_folders(root: Path, roots: Iterable[str | os.PathLike[str]] | None = None) -> list[str]:
    """The sorted class sub-directories of an ImageFolder root (which must resolve under ``roots``;
    None: unconfined)."""
    if roots is not None:
        root = confined(root, roots, "image folder")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise FileNotFoundError(
            f"image folder {root} has no class sub-directories (expected {root}/<class>/<image>)"
        )
    return classes


__all__ = [
    "DECODE_ERRORS",
    "IMAGE_EXTENSIONS",
    "class_folders",
    "decode_rgb",
    "list_images",
    "read_class_list",
]
