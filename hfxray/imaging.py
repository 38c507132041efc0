"""Opening X-ray files safely: one place that turns any odd image into 8-bit L/RGB or a one-line reason.

Used by data preparation (to decide keep / convert / skip), prediction and explanation, so that a corrupt
or exotic file is reported the same way everywhere instead of failing deep inside PIL or a processor.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from .dicom import is_dicom, read_dicom

# Chest X-rays are at most ~4,000 x 4,000 px; anything far beyond is a decompression bomb, not a radiograph.
DEFAULT_MAX_PIXELS = 64_000_000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".dcm", ".dicom")
# Modes a model processor reads as they are (grayscale is expanded to RGB by `to_rgb`).
READY_MODES = {"L", "RGB"}

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error we report, never silently padded


class ImageProblem(Exception):
    """An image that cannot be used; `str(err)` is a one-line reason suitable for a manifest."""


@dataclass
class ImageCheck:
    """What a full decode of an image file found."""

    width: int
    height: int
    mode: str
    format: str | None
    window: str = ""  # DICOM only: how stored values became 8-bit (see hfxray.dicom)

    @property
    def needs_conversion(self) -> bool:
        """True when the file must be rewritten (alpha, palette, CMYK, 16-bit...) rather than linked."""
        return self.mode not in READY_MODES or self.format not in {"JPEG", "PNG"}


def _open_checked(path: str | os.PathLike, max_pixels: int) -> Image.Image:
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageProblem("file not found") from None
    if size == 0:
        raise ImageProblem("zero-byte file")
    if is_dicom(path):  # pydicom, not PIL, reads DICOM; the result is an 8-bit "L" image like any other
        image, window = read_dicom(path, max_pixels)
        image.format, image.info["window"] = "DICOM", window
        return image
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            image = Image.open(path)
            image.load()  # full decode: truncated or corrupt data fails here, not later in training
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageProblem(f"decompression bomb: more than {max_pixels:,} pixels declared") from None
        except UnidentifiedImageError:
            raise ImageProblem("not an image (PIL cannot identify the file format)") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageProblem(f"corrupt or truncated image ({err})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = previous_limit
    return image


def check_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageCheck:
    """Fully decode `path` and describe it; raises ImageProblem with a short reason when unusable."""
    with _open_checked(path, max_pixels) as image:
        return ImageCheck(width=image.width, height=image.height, mode=image.mode, format=image.format,
                          window=image.info.get("window", ""))


def to_standard_mode(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit "L" (grayscale sources) or "RGB", correctly.

    - 16/32-bit grayscale ("I;16", "I", "F"): linear min-max window to 0..255. A plain `convert("L")` clips
      everything above 255 to white, which destroys 12/16-bit radiographs.
    - alpha ("RGBA", "LA", "PA", palette with transparency): composited on black, the background of an X-ray.
    - palette, CMYK, YCbCr, 1-bit: converted through RGB (or L for 1-bit / "LA").
    """
    mode = image.mode
    if mode in READY_MODES:
        return image
    if mode in {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}:
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        return Image.fromarray(np.round((pixels - low) * scale).astype(np.uint8), mode="L")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in {"RGBA", "LA", "La", "RGBa", "PA"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        composite = Image.alpha_composite(background, rgba)
        return composite.convert("L" if mode in {"LA", "La"} else "RGB")
    if mode == "1":
        return image.convert("L")
    return image.convert("RGB")


def load_standard_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, fully decode and convert to 8-bit L/RGB; raises ImageProblem with the reason when unusable."""
    image = _open_checked(path, max_pixels)
    converted = to_standard_mode(image)
    if converted is not image:
        image.close()
    return converted


def load_rgb(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """`load_standard_image` then 3 channels: what every model's processor expects."""
    image = load_standard_image(path, max_pixels)
    return image if image.mode == "RGB" else image.convert("RGB")


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Folders become their image files (recursively, sorted); files are kept as given, even missing ones, so that
    each is reported rather than silently dropped."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        else:
            files.append(path)
    return files
