"""Images: robust loading and atomic saving with Pillow, and the one resize rule.

Images handed between modules are `numpy uint8 [H, W, 3]` RGB (docs/design.md).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from anchorface.errors import ImageError, one_line
from anchorface.io.atomic import atomic_output

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")  # what a folder of photos is read for


def load_image(path: str | Path) -> np.ndarray:
    """Read any Pillow-readable image as `uint8 [H, W, 3]` RGB, as it is meant to be displayed: EXIF orientation
    applied, transparency composited onto white, grayscale / palette / CMYK / 16-bit converted."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
    except FileNotFoundError:
        raise ImageError(f"cannot read image {path}: file not found") from None
    except IsADirectoryError:
        raise ImageError(f"cannot read image {path}: is a directory") from None
    except UnidentifiedImageError:
        raise ImageError(f"cannot read image {path}: not an image file (or a format Pillow cannot read)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot read image {path}: {one_line(e)}") from None


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit grayscale: scale, do not clip
        g = (np.asarray(im, dtype=np.float64) / 257.0).round().clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[..., None], 3, axis=-1))
    has_alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def save_image(path: str | Path, img: np.ndarray, quality: int = 95) -> None:
    """Write a `uint8 [H, W, 3]` RGB (or `[H, W]` gray) image atomically; the format follows the extension."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ValueError(f"save_image expects uint8 [H, W, 3] or [H, W], got {img.dtype} {img.shape}")
    path = Path(path)
    try:
        with atomic_output(path, ImageError, what="image ") as tmp:
            kwargs = {"quality": quality} if path.suffix.lower() in (".jpg", ".jpeg", ".webp") else {}
            Image.fromarray(img).save(tmp, **kwargs)
    except (ValueError, KeyError) as e:  # Pillow: an extension it cannot write
        raise ImageError(f"cannot write image {path}: {one_line(e)}") from None


def resize(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """`img` resized to `size` (a side, or (width, height)) by the one rule used everywhere: area averaging when
    the image does not grow (no aliasing), bicubic when it does (sharper than bilinear)."""
    w, h = (size, size) if isinstance(size, (int, np.integer)) else size
    grows = w * h > img.shape[0] * img.shape[1]
    return cv2.resize(img, (int(w), int(h)), interpolation=cv2.INTER_CUBIC if grows else cv2.INTER_AREA)
