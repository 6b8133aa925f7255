"""Image folders without torch: listing the ImageFolder layout, class lists, and the one JPEG/PNG
decoder every image path uses (the torch loader, the Ray Data decoder, the packer's check).

``decode_rgb`` is Pillow's libjpeg-turbo. A JPEG larger than needed is decoded at a reduced scale
in the DCT domain (``Image.draft``: 1/2, 1/4 or 1/8, several times faster than a full decode), then
resized so that its longer side is at most ``max_side``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

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


def list_images(root: Path, classes: list[str]) -> list[tuple[str, int]]:
    """``(path, label)`` of every image under ``root/<class>/`` (recursively), label = the class's
    position in ``classes``; paths sorted within each class."""
    missing = [name for name in classes if not (root / name).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(classes)} class folders missing under {root}: "
            f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}"
        )
    samples: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        files = sorted(
            str(p)
            for p in (root / name).rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not files:
            raise FileNotFoundError(
                f"class folder {root / name} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        samples += [(f, label) for f in files]
    return samples


def class_folders(root: Path) -> list[str]:
    """The sorted class sub-directories of an ImageFolder root."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise FileNotFoundError(
            f"image folder {root} has no class sub-directories (expected {root}/<class>/<image>)"
        )
    return classes


def read_class_list(path: str | Path) -> list[str]:
    """Class folder names, one per line (blank lines and ``#`` comments ignored)."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"class list {path} not found") from None
    names = [line.split("#", 1)[0].strip() for line in lines]
    names = [name for name in names if name]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if not names or duplicates:
        raise ValueError(
            f"class list {path} "
            + (f"repeats {', '.join(duplicates)}" if duplicates else "names no class")
        )
    return names
