"""DICOM radiographs to 8-bit grayscale, the way a reading station would show them, or a one-line refusal.

`hfxray.imaging` sends `.dcm` / `.dicom` files, and any file with the DICOM preamble magic, here; everything
downstream (data prepare, predict, explain, serve) then sees an ordinary 8-bit "L" image.

Display pipeline (DICOM PS3.3 C.11 / C.7.6.3):

1. stored values -> modality values: Rescale Slope / Intercept (or a Modality LUT Sequence);
2. modality values -> 0..255 through, in order of preference,
   - the first item of the VOI LUT Sequence (output scaled from its declared bit depth),
   - the first Window Center / Window Width pair, with its VOI LUT Function (LINEAR, LINEAR_EXACT or SIGMOID),
   - otherwise a min-max window over the image's own modality values (darkest pixel 0, brightest 255);
3. MONOCHROME1 (high values are dark) is inverted so that bone is bright, as in MONOCHROME2.

Refused with the reason: what cannot be shown as one 2-D grayscale image: files without pixel data (reports,
presentation states), multi-frame objects (CT/MR volumes, cine runs), colour images (most ultrasound).

Read but out of scope (`header_scope`): a single-frame grayscale image whose header says it is not a plain radiograph
(`Modality` other than CR, DX or DR: a CT slice, an MR image, a mammogram, a secondary capture...), not of the chest
(`BodyPartExamined`) or not a frontal view (`ViewPosition` LL, RL, oblique...). The image is still decoded and
classified (a header can be wrong; a reader decides), and the reasons travel with it in `image.info["out_of_scope"]`
so that predict, explain and serve can say so beside the answer. A file that does not say its modality is not
flagged for it. (`hfxray data prepare` skips other modalities: a training image must be a plain radiograph.)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ImageProblem, excerpt, printable

DICOM_EXTENSIONS = (".dcm", ".dicom")
# Projection radiography: computed (CR) and digital (DX) radiography; "DR" is written by some vendors for DX.
PROJECTION_MODALITIES = {"CR", "DX", "DR"}
# What a known other modality is, said beside the answer; others get the code alone (DICOM PS3.3 C.7.3.1.1.1).
OTHER_MODALITIES = {
    "CT": "a CT slice is a cross-section",
    "MR": "an MR image is not an X-ray",
    "PT": "a PET image is not an X-ray",
    "NM": "a nuclear medicine image is not an X-ray",
    "US": "an ultrasound image is not an X-ray",
    "MG": "a mammogram",
    "XA": "an angiography frame",
    "RF": "a fluoroscopy frame",
    "PX": "a dental panoramic radiograph",
    "IO": "an intra-oral radiograph",
    "OT": "'other': often a scan or screenshot",
}
HEADER_TEXT_LIMIT = 64  # characters of a header value quoted in a flag; a hostile header can hold megabytes


# BodyPartExamined values (DICOM PS3.16 Annex L defined terms, and the local words vendors write) that name the
# chest; a value containing any of these stems is in scope. An absent or empty value is not flagged.
CHEST_BODY_PART_STEMS = ("CHEST", "THORA", "TORAX", "TORACE", "LUNG", "PULM")
FRONTAL_VIEWS = {"PA", "AP"}  # the models were trained on frontal chest films only
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"}
INFO_KEY = "out_of_scope"  # image.info key holding the header's out-of-scope reasons, "; "-joined
MODALITY_KEY = "modality"  # image.info key holding the header's Modality ("" when the file does not say)


def _header_text(dataset, keyword: str) -> str:
    """An element's value as one printable upper-case line, shortened, "" when absent or empty."""
    text = printable(" ".join(str(dataset.get(keyword, "") or "").split()).upper())
    return text if len(text) <= HEADER_TEXT_LIMIT else text[:HEADER_TEXT_LIMIT] + "..."


def is_projection(modality: str) -> bool:
    """True for a plain radiograph's modality (CR, DX, DR) and for a file that does not say its modality."""
    return not modality or modality.strip().upper() in PROJECTION_MODALITIES


def header_scope(dataset) -> list[str]:
    """Why a readable image is outside what the models were trained on, from its header alone ([] if nothing says
    so). Trained on: frontal (PA/AP) chest radiographs."""
    reasons = []
    modality = _header_text(dataset, "Modality")
    if not is_projection(modality):
        what = OTHER_MODALITIES.get(modality)
        reasons.append(f"the DICOM header says modality {modality}, not CR/DX (plain radiography)"
                       + (f": {what}" if what else ""))
    body_part = _header_text(dataset, "BodyPartExamined")
    if body_part and not any(stem in body_part for stem in CHEST_BODY_PART_STEMS):
        reasons.append(f"the DICOM header says body part {body_part}, not the chest")
    view = _header_text(dataset, "ViewPosition")
    first_word = view.replace("_", " ").split(" ")[0] if view else ""
    if view and first_word not in FRONTAL_VIEWS:
        kind = "a lateral view" if first_word in LATERAL_VIEWS else "not a frontal (PA/AP) view"
        reasons.append(f"the DICOM header says view position {view}: {kind}")
    return reasons


def is_dicom(path: str | os.PathLike) -> bool:
    """True for a `.dcm` / `.dicom` name or a file carrying the 'DICM' magic after its 128-byte preamble."""
    path = Path(path)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return has_dicom_magic(head)


def has_dicom_magic(head: bytes) -> bool:
    """True when a file's first 132 bytes are a DICOM preamble: 128 bytes, then 'DICM'."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def _problem(message: str):

    return ImageProblem(message)


def _first(value) -> tuple[float, bool]:
    """(first item, whether there were several) of a possibly multi-valued element: the first window is the one
    the modality proposes as default (PS3.3 C.11.2.1.2)."""
    from pydicom.multival import MultiValue

    if isinstance(value, (MultiValue, list, tuple)):
        return float(value[0]), len(value) > 1
    return float(value), False


def _header_checks(dataset, max_pixels: int) -> None:
    """Refuse before decoding: a hostile header must not make us allocate or decompress anything."""
    if "PixelData" not in dataset and "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset:
        raise _problem("DICOM without pixel data (a report or other non-image object). To fix: export the "
                       "radiograph itself")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise _problem(f"multi-frame DICOM ({frames} frames). To fix: export the single radiograph")
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    photometric = str(dataset.get("PhotometricInterpretation", "") or "").strip().upper()
    if samples != 1 or photometric not in {"MONOCHROME1", "MONOCHROME2"}:
        raise _problem(f"colour DICOM ({photometric or 'unknown photometric interpretation'}, {samples} samples "
                       "per pixel). To fix: use a grayscale radiograph (MONOCHROME1 or MONOCHROME2)")
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    if rows < 1 or columns < 1:
        raise _problem(f"DICOM declares an empty image ({rows}x{columns}). To fix: re-export the radiograph")
    if rows * columns > max_pixels:
        raise _problem(f"decompression bomb: more than {max_pixels:,} pixels declared ({columns}x{rows} DICOM)")


def _window_linear(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2 window functions, output in [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    # LINEAR (the default): width is at least 1 and the ramp spans width - 1 between the clipped ends.
    if width <= 1:
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _voi(dataset, values: np.ndarray) -> tuple[np.ndarray, str]:
    """Modality values -> [0, 1] and a short description of the window used (for manifests)."""
    lut_sequence = dataset.get("VOILUTSequence")
    if lut_sequence:
        from pydicom.pixels import apply_voi_lut

        item = lut_sequence[0]
        descriptor = [int(v) for v in item.LUTDescriptor]
        bits = descriptor[2] if len(descriptor) > 2 and descriptor[2] > 0 else 16
        # apply_voi_lut applies the first VOI LUT of the dataset; its output spans 0..2**bits - 1 by definition.
        # LUT entries are indexed by integers: round modality values (exact unless a fractional slope was applied).
        indices = np.round(values).astype(np.int64)
        mapped = apply_voi_lut(indices, dataset, index=0, prefer_lut=True).astype(np.float64)
        more = f", first of {len(lut_sequence)}" if len(lut_sequence) > 1 else ""
        return np.clip(mapped / (2 ** bits - 1), 0.0, 1.0), f"VOI LUT ({descriptor[0]} entries, {bits}-bit{more})"
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        (center, several), (width, _) = _first(dataset.WindowCenter), _first(dataset.WindowWidth)
        function = str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        if width > 0 and np.isfinite(center) and np.isfinite(width):  # an unusable window falls back to min-max
            name = "" if function == "LINEAR" else f" {function}"
            return (_window_linear(values, center, width, function),
                    f"window C={center:g} W={width:g}{name}{' (first of several)' if several else ''}")
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return scaled, f"min-max {low:g}..{high:g} (no window in file)"


def read_dicom(path: str | os.PathLike, max_pixels: int) -> tuple[Image.Image, str]:
    """(8-bit "L" image, window description) of a single-frame grayscale DICOM image.

    Raises `ImageProblem` with a one-line reason for anything else (see the module docstring).
    """
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise _problem("DICOM support needs pydicom. To fix: pip install pydicom pylibjpeg pylibjpeg-libjpeg") from None
    try:
        dataset = pydicom.dcmread(str(path), force=False)
    except InvalidDicomError:
        raise _problem("not a DICOM file (no DICM preamble) though named like one. To fix: check the file") from None
    except Exception as err:  # pydicom raises many types on hostile headers; each becomes one line
        raise _problem(f"corrupt or truncated DICOM ({type(err).__name__}: {excerpt(err, 120)})") from None
    _header_checks(dataset, max_pixels)
    try:
        stored = dataset.pixel_array
    except Exception as err:  # missing decoder plugin, truncated pixel data, bad fragments...
        reason = excerpt(err)
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax)) if syntax is not None else "unknown transfer syntax"
        raise _problem(f"cannot decode DICOM pixel data ({name}: {reason}). To fix: check the file is complete; "
                       "compressed syntaxes need pylibjpeg and pylibjpeg-libjpeg") from None
    if stored.ndim != 2:
        raise _problem(f"DICOM pixel data has shape {stored.shape}, not one grayscale frame. To fix: export a "
                       "single radiograph")
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(stored, dataset), dtype=np.float64)
    if not np.isfinite(values).all():
        raise _problem("DICOM pixel data holds NaN or infinite values. To fix: re-export the radiograph")
    scaled, window = _voi(dataset, values)
    photometric = str(dataset.PhotometricInterpretation).strip().upper()
    if photometric == "MONOCHROME1":  # high values are dark: invert so bone is bright, as in MONOCHROME2
        scaled = 1.0 - scaled
        window += ", MONOCHROME1 inverted"
    image = Image.fromarray(np.round(scaled * 255.0).astype(np.uint8), mode="L")
    image.info[MODALITY_KEY] = _header_text(dataset, "Modality")  # data prepare keeps plain radiographs only
    scope = header_scope(dataset)
    if scope:  # PIL copies info through convert / resize, so the reasons reach every caller of hfxray.imaging
        image.info[INFO_KEY] = "; ".join(scope)
    return image, window
