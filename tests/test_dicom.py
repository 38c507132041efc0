"""DICOM in, everywhere images come in: pixel values after rescale, window / VOI LUT and MONOCHROME1 inversion,
compressed transfer syntaxes, and one-line refusals for what is not a single grayscale projection radiograph."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import os

import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import (DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian,  # noqa: E402
                         JPEG2000Lossless, JPEGBaseline8Bit, RLELossless, generate_uid)

from hfxray.imaging import ImageProblem, check_image, expand_paths, load_rgb, load_standard_image  # noqa: E402


def make_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 12,
               modality: str | None = "DX", signed: bool = False, **elements) -> Path:
    """A minimal but valid single-frame DX file; `elements` become top-level attributes (Window..., Rescale...)."""
    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if modality is not None:
        dataset.Modality = modality
    dataset.Rows, dataset.Columns = pixels.shape[:2]
    dataset.SamplesPerPixel = 1 if pixels.ndim == 2 else pixels.shape[2]
    dataset.PhotometricInterpretation = photometric
    allocated = 8 if bits_stored <= 8 else 16
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = allocated, bits_stored, bits_stored - 1
    dataset.PixelRepresentation = int(signed)
    if dataset.SamplesPerPixel > 1:
        dataset.PlanarConfiguration = 0
    dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}[(allocated, signed)]
    dataset.PixelData = pixels.astype(dtype).tobytes()
    for name, value in elements.items():
        setattr(dataset, name, value)
    dataset.save_as(path, enforce_file_format=True)
    return path


RAMP_12 = np.array([[0, 1000, 2000], [3000, 4000, 4095]])


def test_monochrome2_12bit_without_window_is_min_max(tmp_path):
    path = make_dicom(tmp_path / "a.dcm", RAMP_12)
    image = load_standard_image(path)
    assert image.mode == "L" and image.size == (3, 2)
    expected = np.round(RAMP_12 / 4095 * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(image), expected)
    check = check_image(path)
    assert (check.format, check.needs_conversion) == ("DICOM", True)
    assert check.window == "min-max 0..4095 (no window in file)"


def test_monochrome1_is_inverted(tmp_path):
    path = make_dicom(tmp_path / "m1.dcm", RAMP_12, photometric="MONOCHROME1")
    expected = 255 - np.round(RAMP_12 / 4095 * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(load_standard_image(path)), expected)
    assert check_image(path).window.endswith("MONOCHROME1 inverted")


def test_rescale_then_first_window(tmp_path):
    # Stored 0..4095 with slope 2, intercept -1000 -> modality values -1000..7190. Window C=1000 W=2001 (the
    # first of two) maps 0 -> 0, 2000 -> 255, and 1000 -> 127.5 on the LINEAR ramp (rounded to 128).
    stored = np.array([[500, 1000, 1500], [0, 1250, 4095]])
    path = make_dicom(tmp_path / "w.dcm", stored, RescaleSlope=2, RescaleIntercept=-1000,
                      WindowCenter=[1000, 40], WindowWidth=[2001, 400])
    values = stored * 2.0 - 1000
    expected = np.round(np.clip((values - 999.5) / 2000 + 0.5, 0, 1) * 255).astype(np.uint8)
    assert expected.tolist() == [[0, 128, 255], [0, 191, 255]]
    np.testing.assert_array_equal(np.asarray(load_standard_image(path)), expected)
    assert check_image(path).window == "window C=1000 W=2001 (first of several)"


def test_window_on_monochrome1_is_windowed_then_inverted(tmp_path):
    stored = np.array([[100, 200], [300, 400]])
    path = make_dicom(tmp_path / "w1.dcm", stored, photometric="MONOCHROME1", WindowCenter=250, WindowWidth=201)
    windowed = np.clip((stored - 249.5) / 200 + 0.5, 0, 1)
    np.testing.assert_array_equal(np.asarray(load_standard_image(path)), np.round((1 - windowed) * 255))
    assert check_image(path).window == "window C=250 W=201, MONOCHROME1 inverted"


def test_voi_lut_sequence_wins_over_window(tmp_path):
    # A 4-entry 8-bit LUT starting at stored value 10: 10 -> 0, 11 -> 50, 12 -> 200, 13 -> 255; below and above
    # the LUT's range take its first and last entries.
    lut = Dataset()
    lut.LUTDescriptor = [4, 10, 8]
    lut.LUTData = np.array([0, 50, 200, 255], dtype=np.uint16).tobytes()  # OW: one 16-bit word per entry
    stored = np.array([[5, 10, 11], [12, 13, 40]])
    path = make_dicom(tmp_path / "lut.dcm", stored, bits_stored=16, VOILUTSequence=Sequence([lut]),
                      WindowCenter=0, WindowWidth=1)
    np.testing.assert_array_equal(np.asarray(load_standard_image(path)), [[0, 0, 50], [200, 255, 255]])
    assert check_image(path).window.startswith("VOI LUT (4 entries, 8-bit")


def test_16bit_signed_full_range(tmp_path):
    stored = np.array([[-32768, 0], [16384, 32767]])
    path = make_dicom(tmp_path / "s16.dcm", stored, bits_stored=16, signed=True)
    expected = np.round((stored + 32768) / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(load_standard_image(path)), expected)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000-lossless"])
def test_compressed_lossless_syntaxes_decode_exactly(tmp_path, syntax):
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4096, size=(32, 48)).astype(np.uint16)
    path = make_dicom(tmp_path / "c.dcm", stored)
    dataset = pydicom.dcmread(path)
    try:
        dataset.compress(syntax)
    except (RuntimeError, ValueError) as err:  # no encoder plugin for this syntax
        pytest.skip(f"cannot encode {syntax.name} here: {err}")
    dataset.save_as(path)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    low, high = stored.min(), stored.max()
    expected = np.round((stored - low) / (high - low) * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(load_standard_image(path)), expected)


def test_jpeg_baseline_decodes(tmp_path):
    """JPEG baseline (the most common lossy syntax): encapsulated Pillow JPEG, decoded by a pydicom plugin."""
    from pydicom.encaps import encapsulate

    gradient = np.tile(np.linspace(0, 255, 64).round().astype(np.uint8), (48, 1))
    buffer = io.BytesIO()
    Image.fromarray(gradient, mode="L").save(buffer, format="JPEG", quality=95)
    path = make_dicom(tmp_path / "j.dcm", gradient, bits_stored=8, WindowCenter=127.5, WindowWidth=256)
    dataset = pydicom.dcmread(path)
    dataset.PixelData = encapsulate([buffer.getvalue()])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    dataset.save_as(path)
    decoded = np.asarray(load_standard_image(path)).astype(int)
    assert decoded.shape == (48, 64)
    assert np.abs(decoded - gradient).max() <= 4  # lossy, but the window C=127.5 W=256 is the identity


@pytest.mark.parametrize("case, expected", [
    ("ct-volume", "multi-frame DICOM (3 frames)"),
    ("multiframe", "multi-frame DICOM (2 frames)"),
    ("colour", "colour DICOM (RGB, 3 samples per pixel)"),
    ("no-pixels", "DICOM without pixel data"),
    ("truncated", "cannot decode DICOM pixel data"),
    ("garbage", "not a DICOM file"),
    ("huge", "decompression bomb"),
])
def test_refusals_are_one_line(tmp_path, case, expected):
    pixels = np.zeros((4, 4), dtype=np.uint16)
    path = tmp_path / f"{case}.dcm"
    if case == "ct-volume":  # a CT series exported as one multi-frame object: not one 2-D image
        make_dicom(path, np.arange(12 * 4).reshape(12, 4), modality="CT", NumberOfFrames=3, Rows=4)
    elif case == "multiframe":
        make_dicom(path, np.zeros((8, 4)), NumberOfFrames=2)
    elif case == "colour":
        make_dicom(path, np.zeros((4, 4, 3)), photometric="RGB", bits_stored=8)
    elif case == "no-pixels":
        make_dicom(path, pixels)
        dataset = pydicom.dcmread(path)
        del dataset.PixelData
        dataset.save_as(path)
    elif case == "truncated":
        make_dicom(path, np.arange(64 * 64).reshape(64, 64) % 4096)
        path.write_bytes(path.read_bytes()[:-3000])
    elif case == "garbage":
        path.write_bytes(b"this is not a DICOM file at all" * 10)
    elif case == "huge":
        make_dicom(path, pixels, Rows=60000, Columns=60000)
    with pytest.raises(ImageProblem) as caught:
        load_rgb(path)
    message = str(caught.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_dicom_magic_without_extension_and_folder_listing(tmp_path):
    make_dicom(tmp_path / "noext", RAMP_12)
    make_dicom(tmp_path / "b.dicom", RAMP_12)
    assert load_rgb(tmp_path / "noext").mode == "RGB"
    (tmp_path / "NOTES").write_text("BMI of the patient: 22")  # starts like a BMP, is not one
    os.mkfifo(tmp_path / "PIPE")  # opening it to read its first bytes would block
    make_dicom(tmp_path / "export.txt", RAMP_12)
    (tmp_path / "sub").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "sub" / "IM0002", format="JPEG")
    # In a folder: a named file goes by its extension; a file without one (PACS exports) by its leading bytes
    assert {p.name for p in expand_paths([tmp_path])} == {"b.dicom", "noext", "IM0002"}


def test_prepare_converts_dicom_and_records_the_window(sample_dir, tmp_path):
    """A CoronaHack CSV row naming a .dcm file becomes an 8-bit PNG; the manifest says which window made it."""
    from hfxray.data import prepare, read_manifest
    from hfxray.data.coronahack import CSV_NAME, IMAGE_ROOT

    source = tmp_path / "source"
    with (sample_dir / CSV_NAME).open(newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    name_column = header.index("X_ray_image_name")
    keep = body[:30] + [row for row in body if row[header.index("Dataset_type")] == "TEST"][:10]
    for row in keep:
        folder = "test" if row[header.index("Dataset_type")] == "TEST" else "train"
        target = source / IMAGE_ROOT / folder / row[name_column]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample_dir / IMAGE_ROOT / folder / row[name_column], target)
    # Replace the first TRAIN image by a MONOCHROME1 DICOM of itself (12-bit, with a window).
    first = keep[0]
    jpeg = source / IMAGE_ROOT / "train" / first[name_column]
    gray = np.asarray(Image.open(jpeg).convert("L")).astype(np.uint16)
    dicom_name = Path(first[name_column]).stem + ".dcm"
    make_dicom(jpeg.with_name(dicom_name), (255 - gray) * 16, photometric="MONOCHROME1", WindowCenter=2040,
               WindowWidth=4081)
    jpeg.unlink()
    first[name_column] = dicom_name
    # ... and the second by the same picture labelled a CT: predict would flag it, training must not learn from it.
    second = keep[1]
    jpeg = source / IMAGE_ROOT / "train" / second[name_column]
    ct_name = Path(second[name_column]).stem + ".dcm"
    make_dicom(jpeg.with_name(ct_name), np.asarray(Image.open(jpeg).convert("L")).astype(np.uint16) * 16,
               modality="CT")
    jpeg.unlink()
    second[name_column] = ct_name
    with (source / CSV_NAME).open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *keep])
    out = tmp_path / "prepared"
    prepare(source, out, echo=lambda *_: None, progress=lambda items, **_: items, min_side=16)
    row = next(r for r in read_manifest(out) if r["source_file"] == dicom_name)
    assert row["status"] == "kept", row["reason"]
    assert row["file"].endswith(".png") and row["action"].startswith("converted")
    assert row["window"] == "window C=2040 W=4081, MONOCHROME1 inverted"
    png = np.asarray(Image.open(out / row["file"]))
    # (255 - g) * 16 windowed over 0..4080 then inverted gives back g (to rounding).
    assert np.abs(png.astype(int) - gray.astype(int)).max() <= 1
    ct = next(r for r in read_manifest(out) if r["source_file"] == ct_name)
    assert ct["status"] != "kept" and ct["reason"].startswith("excluded modality: DICOM CT"), ct
    others = [r for r in read_manifest(out) if r["status"] == "kept" and r["source_file"] != dicom_name]
    assert others and all(r["window"] == "" for r in others)


@pytest.mark.parametrize("window", [{}, {"WindowCenter": 500, "WindowWidth": 400}])
def test_a_blank_dicom_is_refused(tmp_path, window):
    """One stored value everywhere: min-max would give black, a window a flat grey; neither is a radiograph."""
    path = make_dicom(tmp_path / "blank.dcm", np.full((64, 64), 700, np.uint16), **window)
    with pytest.raises(ImageProblem, match=r"^blank image: every pixel has the value \d+ \(L\), DICOM window "):
        check_image(path)


# --- other modalities: read and flagged out of scope, not refused ------------------------------------------------

def _testdata(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install pydicom-data, in the [dev] extra)")
    return Path(path)


@pytest.mark.parametrize("name, modality", [("CT_small.dcm", "CT"), ("MR_small.dcm", "MR")])
def test_a_real_ct_or_mr_slice_is_read_and_flagged_out_of_scope(name, modality):
    """pydicom's own CT and MR test files: single-frame grayscale, so shown and analysed, and said to be out of
    scope in the words predict, explain and serve print."""
    from hfxray.imaging import out_of_scope

    path = _testdata(name)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (pydicom.dcmread(path).Columns, pydicom.dcmread(path).Rows)
    assert np.asarray(image).std() > 10  # a real picture, not a blank
    reason = out_of_scope(image)
    assert reason.startswith(f"the DICOM header says modality {modality}, not CR/DX (plain radiography): ")
    assert check_image(path).out_of_scope == reason and check_image(path).modality == modality


@pytest.mark.parametrize("name, expected", [
    ("emri_small.dcm", "multi-frame DICOM (10 frames)"),  # an MR volume
    ("US1_UNCR.dcm", "colour DICOM (RGB, 3 samples per pixel)"),  # an ultrasound in colour
    ("OBXXXX1A.dcm", "colour DICOM (PALETTE COLOR, 1 samples per pixel)"),  # an ultrasound with a palette
    ("SC_rgb.dcm", "colour DICOM (RGB, 3 samples per pixel)"),  # a secondary capture in colour
])
def test_what_is_not_one_grayscale_image_is_still_refused_in_one_line(name, expected):
    with pytest.raises(ImageProblem) as caught:
        load_rgb(_testdata(name))
    message = str(caught.value)
    assert message.startswith(expected) and "To fix: " in message and "\n" not in message, message


@pytest.mark.parametrize("modality, flagged", [
    ("CR", ""), ("DX", ""), ("DR", ""), (None, ""),  # as before: a plain radiograph, or a file that does not say
    ("MG", "modality MG, not CR/DX (plain radiography): a mammogram"),
    ("PX", "modality PX, not CR/DX (plain radiography): a dental panoramic radiograph"),
    ("OT", "modality OT, not CR/DX (plain radiography): 'other': often a scan or screenshot"),
    ("XC", "modality XC, not CR/DX (plain radiography)"),  # a code without a description: said as it is
])
def test_a_nema_chest_radiograph_relabelled_keeps_its_pixels_and_is_flagged_by_modality(tmp_path, modality,
                                                                                         flagged):
    """NEMA WG04 RG1 (a CR chest PA) with its Modality rewritten: the same pixels either way; only the flag moves."""
    from hfxray.imaging import out_of_scope

    source = _testdata("RG1_UNCR.dcm")
    dataset = pydicom.dcmread(source)
    if modality is None:
        del dataset.Modality
    else:
        dataset.Modality = modality
    path = tmp_path / "rg1.dcm"
    dataset.save_as(path)
    image, original = load_standard_image(path), load_standard_image(source)
    assert np.array_equal(np.asarray(image), np.asarray(original))
    if flagged:
        assert out_of_scope(image) == f"the DICOM header says {flagged}"
    else:
        assert out_of_scope(image) == out_of_scope(original) == ""  # RG1 is CHEST, no view position


def test_modality_flag_holds_for_any_header_value():
    """Whatever a header writes in Modality: flagged exactly when it is not CR/DX/DR (any case, padded) nor empty,
    in one printable, bounded line."""
    import unicodedata

    from hypothesis import given, settings, strategies as st
    from pydicom.dataset import Dataset

    from hfxray.dicom import header_scope

    words = st.sampled_from(["CR", "DX", "DR", "cr", " DX ", "", "CT", "MR", "MG", "US", "XA", "RF", "PX", "OT",
                             "NM", "SR"])

    @settings(max_examples=150, deadline=None, database=None)
    @given(st.one_of(words, st.text(max_size=300)))
    def check(modality):
        dataset = Dataset()
        dataset.Modality = modality
        reasons = header_scope(dataset)
        plain = " ".join(modality.split()).upper()
        assert bool(reasons) == (plain not in {"", "CR", "DX", "DR"}), (modality, reasons)
        for reason in reasons:
            assert "\n" not in reason and "\r" not in reason and len(reason) < 200, reason
            assert not any(unicodedata.category(c) == "Cc" for c in reason), reason  # escaped (\\xNN)
            assert "not CR/DX (plain radiography)" in reason

    check()
