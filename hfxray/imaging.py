"""Opening X-ray files safely: one place that turns any odd image into 8-bit L/RGB or a one-line reason.

Used by data preparation (to decide keep / convert / skip), prediction and explanation, so that a corrupt
or exotic file is reported the same way everywhere instead of failing deep inside PIL or a processor.
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from .dicom import INFO_KEY, MODALITY_KEY, has_dicom_magic, is_dicom, read_dicom
from .errors import ImageProblem  # noqa: F401 (imaging's error, kept in errors.py below imaging and dicom)

# Chest X-rays are at most ~4,000 x 4,000 px; anything far beyond is a decompression bomb, not a radiograph.
DEFAULT_MAX_PIXELS = 64_000_000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".dcm", ".dicom")
# Modes a model processor reads as they are (grayscale is expanded to RGB by `to_rgb`).
READY_MODES = {"L", "RGB"}
HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}  # one band, more than 8 bits: windowed to "L"

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error we report, never silently padded


@dataclass
class ImageCheck:
    """What a full decode of an image file found."""

    width: int
    height: int
    mode: str
    format: str | None
    window: str = ""  # DICOM only: how stored values became 8-bit (see hfxray.dicom)
    inspected: object = None  # what `check_image(inspect=...)` returned for this decode
    out_of_scope: str = ""  # DICOM only: why the header says it is not a frontal chest radiograph (hfxray.dicom)
    modality: str = ""  # DICOM only: the header's Modality ("" when it does not say)

    @property
    def needs_conversion(self) -> bool:
        """True when the file must be rewritten (alpha, palette, CMYK, 16-bit...) rather than linked."""
        return self.mode not in READY_MODES or self.format not in {"JPEG", "PNG"}


def _open_checked(path: str | os.PathLike, max_pixels: int) -> Image.Image:
    try:
        path = Path(path)
        info = path.stat()
    except FileNotFoundError:
        raise ImageProblem("file not found") from None
    except ValueError:  # a NUL byte in the name
        raise ImageProblem("invalid file name (NUL byte)") from None
    except OSError as err:  # a looping link, a name too long, no permission to search a folder...
        raise ImageProblem(f"cannot read the file ({err.strerror or err})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageProblem("a folder, not an image file (it could not be searched)")
    if not stat.S_ISREG(info.st_mode):
        raise ImageProblem("not a regular file (a device, pipe or socket)")  # reading a pipe could block forever
    if info.st_size == 0:
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
        except PermissionError as err:
            raise ImageProblem(f"cannot read the file ({err.strerror})") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageProblem(f"corrupt or truncated image ({err})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = previous_limit
    return image


def check_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
                inspect: Callable[[Image.Image], object] | None = None) -> ImageCheck:
    """Fully decode `path` and describe it; raises ImageProblem with a short reason when unusable.

    `inspect(standard_image)` runs on this decode (the duplicate finder's fingerprint: no second decode); its
    result is `ImageCheck.inspected`.
    """
    with _open_checked(path, max_pixels) as image:
        standard = to_standard_mode(image)
        _refuse_blank(image, standard)
        return ImageCheck(width=image.width, height=image.height, mode=image.mode, format=image.format,
                          window=image.info.get("window", ""), inspected=inspect(standard) if inspect else None,
                          out_of_scope=out_of_scope(image), modality=str(image.info.get(MODALITY_KEY, "")))


def out_of_scope(image: Image.Image) -> str:
    """Why the file's own header says the image is outside what the models were trained on ("" when nothing says
    so; only DICOM headers can, see `hfxray.dicom.header_scope`). Kept by `load_standard_image` and `load_rgb`."""
    return str(image.info.get(INFO_KEY, ""))


def _refuse_blank(original: Image.Image, standard: Image.Image) -> None:
    """An image whose pixels all have one value holds no radiograph (a failed export, an empty frame): there is
    nothing to learn from or to classify, and a 16-bit one would silently become black under the min-max window."""
    extrema = standard.getextrema()
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
    if any(low != high for low, high in bands):
        return
    raw = None
    if original.mode in HIGH_DEPTH_MODES or original.mode == "L":  # one band: name the stored value
        raw = float(np.asarray(original).flat[0])  # (getextrema refuses "I;16B")
    value = f"{raw:g} ({original.mode})" if raw is not None else ", ".join(f"{low:g}" for low, _ in bands)
    if original.info.get("window"):
        value += f", DICOM window {original.info['window']}"
    raise ImageProblem(f"blank image: every pixel has the value {value}")


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
    if mode in HIGH_DEPTH_MODES:
        pixels = np.asarray(image, dtype=np.float64)
        if not np.isfinite(pixels).all():  # min-max of NaN is NaN: the image would silently become black
            bad = int(np.count_nonzero(~np.isfinite(pixels)))
            raise ImageProblem(f"NaN or infinite pixel values ({bad:,} of {pixels.size:,} pixels)")
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
    try:
        converted = to_standard_mode(image)
        _refuse_blank(image, converted)
    except BaseException:
        image.close()
        raise
    if converted is not image:
        converted.info.update({key: image.info[key] for key in (INFO_KEY, "window") if key in image.info})
        image.close()
    return converted


def load_rgb(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """`load_standard_image` then 3 channels: what every model's processor expects."""
    image = load_standard_image(path, max_pixels)
    return image if image.mode == "RGB" else image.convert("RGB")


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Folders become their image files (recursively, sorted); files are kept as given, even missing ones, so that
    each is reported rather than silently dropped.

    Symbolically linked sub-folders are followed (each real folder once, so a link loop cannot hang), links to
    files are kept even when broken, and a sub-folder that cannot be listed is kept as an entry of its own: the
    caller reports it like an unreadable file.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += _images_under(path)
        else:
            files.append(path)
    return files


def _images_under(folder: Path) -> list[Path]:
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for root, dirs, names in os.walk(folder, followlinks=True, onerror=lambda err: found.append(Path(err.filename))):
        try:
            info = os.stat(root)
        except OSError:
            found.append(Path(root))
            dirs[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:  # reached again through a link: already listed
            dirs[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        for name in names:
            extension = os.path.splitext(name)[1].lower()
            if extension in IMAGE_EXTENSIONS or (not extension and _looks_like_an_image(Path(root) / name)):
                found.append(Path(root) / name)
    return sorted(found)


# Leading bytes of the formats hfxray reads. PACS exports often name DICOM files without an extension (IM0001),
# so a file without one is listed when its content says it is an image; named files go by their extension.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")


def _looks_like_an_image(path: Path) -> bool:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # opening a FIFO or a device would block or read forever
            return False
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    webp = head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    # "BM" alone starts many a text file: a BMP's info header size (byte 14) is one of a few values
    bmp = head[:2] == b"BM" and len(head) > 14 and head[14] in (12, 40, 52, 56, 64, 108, 124)
    return head.startswith(_MAGIC) or webp or bmp or has_dicom_magic(head)
