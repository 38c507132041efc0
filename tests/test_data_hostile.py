"""Hostile and careless input to `hfxray data prepare` (and the file helpers of predict / explain).

The guarantees under test (README, Data section):
1. source data is read-only: nothing under --source is opened for writing, no output is written through a hard link;
2. nothing outside --out is created, changed or deleted; untrusted CSV names are skipped with a reason and output
   names never collide;
3. only what hfxray wrote is ever replaced or deleted, and the swap leaves a complete output at every instant;
6. degenerate data (a split missing a class, NaN/inf pixels) is refused before training;
7. every bad input ends in one line `error: ... To fix: ...` and exit 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hfxray import data, outputs
from hfxray.data import coronahack
from hfxray.cli import main as cli_main
from hfxray.imaging import ImageProblem, expand_paths, load_rgb
from test_data import QUIET, KaggleSource, _gray, _manifest_by_source, _save


@pytest.fixture
def source(tmp_path) -> KaggleSource:
    return KaggleSource(tmp_path / "kaggle")


def _snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple]:
    """Every entry under `root` (links not followed): type and bytes (files) or target (links)."""
    entries = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            if skip is not None and (path == skip or skip in path.parents):
                continue
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                entries[str(path)] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                entries[str(path)] = ("dir",)
            else:
                entries[str(path)] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return entries


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "To fix:" in lines[0], err
    assert "Traceback" not in err
    return lines[0]


# --- 2. untrusted CSV names -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../../x.jpg", "../../../x.png"])
def test_a_csv_name_with_dots_never_writes_outside_out(source, tmp_path, name):
    source.add_good()
    # the image the name points to (relative to the split folder), and a user's file where it would land
    escaped_image = source.root / "x.jpg"
    _save(_gray(), escaped_image, format="JPEG")
    _save(Image.new("RGBA", (80, 80), (1, 2, 3, 128)), source.root / "x.png", format="PNG")  # converted
    (tmp_path / "x.jpg").write_text("the user's file")
    (tmp_path / "x.png").write_text("the user's file")
    source.add(name, write=False)
    source.write_csv()
    before = _snapshot(tmp_path, skip=tmp_path / "out")
    data.prepare(source.root, tmp_path / "out", **QUIET)
    assert _snapshot(tmp_path, skip=tmp_path / "out") == before
    assert _manifest_by_source(tmp_path / "out")[name]["reason"] == "unsafe file name: '..' leads out of the folder"


def test_a_user_file_next_to_out_is_not_overwritten(source, tmp_path):
    source.add_good()
    _save(_gray(), source.root / ".bashrc", format="JPEG")
    (tmp_path / ".bashrc").write_text("alias ls='ls -F'\n")
    source.add("../../../.bashrc", write=False)
    data.prepare(source.write_csv(), tmp_path / "out", **QUIET)
    assert (tmp_path / ".bashrc").read_text() == "alias ls='ls -F'\n"


@pytest.mark.parametrize("name,reason", [
    ("x\0.jpeg", "NUL byte"), ("x\udcff.jpeg", "not UTF-8"), ("sub/x.jpeg", "path separator"),
    ("sub\\x.jpeg", "path separator"), ("..", "'..'"), (".", "'.'"), ("C:x.jpeg", "absolute path"),
    ("x\n.jpeg", "control character"), ("ads.jpeg:stream", "':'"), ("ABSOLUTE", "absolute path"),
])
def test_unsafe_csv_names_are_skipped_with_a_reason(source, tmp_path, name, reason, capsys):
    source.add_good()
    (source.path("sub", "TRAIN")).mkdir()
    _save(_gray(), source.path("sub", "TRAIN") / "x.jpeg", format="JPEG")
    if name == "ABSOLUTE":
        name = str(_save(_gray(), tmp_path / "elsewhere.jpeg", format="JPEG"))
    source.rows.append(["99", name, "Normal", "TRAIN", "", ""])
    with (source.root / coronahack.CSV_NAME).open("w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        import csv
        writer = csv.writer(handle)
        writer.writerow(["", "X_ray_image_name", "Label", "Dataset_type", "Label_2_Virus_category",
                         "Label_1_Virus_category"])
        writer.writerows(source.rows)
    out = tmp_path / "out"
    assert cli_main(["data", "prepare", "--source", str(source.root), "--out", str(out), "--min-side", "8"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    row = next(r for r in data.read_manifest(out) if r["csv_row"] == str(len(source.rows)))
    assert row["status"] == "skipped" and reason in row["reason"] and row["reason"].startswith("unsafe file name")
    assert "\n" not in row["source_file"] and "\0" not in row["source_file"]
    assert Counter(r["split"] for r in data.read_manifest(out) if r["status"] == "kept").total() == 16


def test_a_sub_folder_and_undecodable_names_on_disk_are_reported(source, tmp_path):
    source.add_good()
    (source.path("nested")).mkdir()
    undecodable = os.fsencode(source.path("x")) + b"\xff.jpeg"
    with open(undecodable, "wb") as handle:
        handle.write(source.path("IM-0000-0001.jpeg").read_bytes())
    data.prepare(source.write_csv(), tmp_path / "out", **QUIET)
    rows = _manifest_by_source(tmp_path / "out")
    assert rows["nested"]["reason"].startswith("a folder")
    assert rows["x\\xff.jpeg"]["reason"] == "not listed in the CSV"


# --- 1. source is read-only; output names never collide -------------------------------------------------------

@pytest.mark.parametrize("order", [("x.png", "x.tif"), ("x.tif", "x.png")])
def test_same_stem_never_writes_into_the_source_nor_loses_an_image(source, tmp_path, order):
    source.add_good()
    for name in order:  # x.png is kept as it is (hard link), x.tif is converted to PNG
        seed, kind = (101, "PNG") if name == "x.png" else (102, "TIFF")  # pictures no other row holds
        source.add(name, image=_gray(seed=seed), format=kind)
    source.write_csv()
    before = _snapshot(source.root)
    out = tmp_path / "out"
    data.prepare(source.root, out, **QUIET)
    assert _snapshot(source.root) == before
    rows = _manifest_by_source(out)
    files = {rows[name]["file"] for name in order}
    assert len(files) == 2 and all((out / f).is_file() for f in files)
    assert (out / rows["x.png"]["file"]).read_bytes() == source.path("x.png").read_bytes()
    converted, original = (np.asarray(Image.open(p)) for p in (out / rows["x.tif"]["file"], source.path("x.tif")))
    assert np.array_equal(converted, original)


def test_names_differing_in_case_get_different_output_names(source, tmp_path):
    source.add_good()
    source.add("Case.jpeg", format="JPEG")
    source.add("case.jpeg", format="JPEG", image=_gray(seed=77))
    source.add("CASE.png", format="PNG")
    source.add("case.tif", format="TIFF")
    out = tmp_path / "out"
    data.prepare(source.write_csv(), out, val_fraction=0.0, **QUIET)  # all in train/normal: one folder
    kept = [r["file"] for r in data.read_manifest(out) if r["status"] == "kept"]
    assert len({f.casefold() for f in kept}) == len(kept) == 20


def test_a_link_inside_the_source_to_a_file_outside_is_skipped(source, tmp_path):
    source.add_good()
    private = _save(_gray(), tmp_path / "private.jpeg", format="JPEG")
    source.path("link.jpeg").symlink_to(private)
    source.add("link.jpeg", write=False)
    source.path("loop.jpeg").symlink_to("loop.jpeg")
    source.add("loop.jpeg", write=False)
    source.path("sibling.jpeg").symlink_to("IM-0000-0001.jpeg")  # inside the folder: fine
    source.add("sibling.jpeg", write=False)
    os.link(source.path("IM-0001-0001.jpeg"), source.path("hard.jpeg"))
    source.add("hard.jpeg", write=False)
    data.prepare(source.write_csv(), tmp_path / "out", **QUIET)
    rows = _manifest_by_source(tmp_path / "out")
    assert rows["link.jpeg"]["reason"] == "symbolic link to a file outside its split folder"
    assert rows["loop.jpeg"]["reason"] == "broken or looping symbolic link"
    # a second name of one image (a link inside the folder) would count it twice, maybe in train and test
    assert rows["sibling.jpeg"]["reason"] == "duplicate: the same file as IM-0000-0001.jpeg (a link)"
    assert rows["hard.jpeg"]["reason"] == "duplicate: the same file as IM-0001-0001.jpeg (a link)"


# --- 3. only what hfxray wrote is replaced or deleted ---------------------------------------------------------

def test_a_folder_holding_a_manifest_is_not_ours_to_delete(source, tmp_path):
    source.add_good()
    source.write_csv()
    user = tmp_path / "user"
    user.mkdir()
    (user / data.MANIFEST_NAME).write_text("my own manifest\n")
    (user / "thesis.tex").write_text("years of work")
    (source.root / data.MANIFEST_NAME).write_text("a manifest inside the source\n")
    (tmp_path / data.MANIFEST_NAME).write_text("a manifest next to the source\n")
    before = _snapshot(tmp_path)
    for out, expected in [(user, "no .hfxray-prepared marker"), (source.root, "is the source data"),
                          (tmp_path, "contains the source data"), (source.root / "prepared", "lies inside the source"),
                          (source.path("normal"), "lies inside the source")]:
        with pytest.raises(data.DataError, match=expected):
            data.prepare(source.root, out, **QUIET)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["file", "dot", "parent-of-cwd", "symlink"])
def test_out_that_is_a_file_the_current_folder_or_a_link_is_refused_in_one_line(source, tmp_path, monkeypatch,
                                                                                  capsys, case):
    source.add_good()
    source.write_csv()
    work = tmp_path / "work"
    (work / "empty").mkdir(parents=True)
    (work / "notes.txt").write_text("keep")
    (work / data.MANIFEST_NAME).write_text("a user's own manifest\n")
    monkeypatch.chdir(work)
    if case == "file":
        out = str(work / "notes.txt")
    elif case == "dot":
        monkeypatch.chdir(work / "empty")
        out = "."
    elif case == "parent-of-cwd":
        monkeypatch.chdir(work / "empty")
        out = ".."
    else:
        earlier = tmp_path / "earlier"
        data.prepare(source.root, earlier, **QUIET)
        (work / "link").symlink_to(earlier)
        out = "link"
    before = _snapshot(tmp_path)
    assert cli_main(["data", "prepare", "--source", str(source.root), "--out", out]) == 2
    _one_error_line(capsys.readouterr().err)
    assert _snapshot(tmp_path) == before


def test_an_earlier_output_is_replaced_and_an_empty_folder_is_used(source, tmp_path):
    source.add_good()
    out = tmp_path / "out"
    out.mkdir()
    data.prepare(source.write_csv(), out, **QUIET)
    assert json.loads((out / outputs.MARKER_NAME).read_text())["complete"] is True
    (out / "stale.txt").write_text("written by hand into the output")
    source.add("IM-0500-0001.jpeg", format="JPEG")
    with pytest.raises(data.DataError, match="stale.txt in it is not"):  # a file prepare did not write is kept
        data.prepare(source.write_csv(), out, **QUIET)
    assert (out / "stale.txt").read_text() == "written by hand into the output"
    (out / "stale.txt").unlink()
    data.prepare(source.write_csv(), out, **QUIET)
    assert "IM-0500-0001.jpeg" in _manifest_by_source(out)
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # readable like any folder the user makes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kaggle", "out"]


def test_a_kill_between_the_two_renames_is_recovered_on_the_next_run(source, tmp_path, monkeypatch):
    source.add_good()
    out = tmp_path / "out"
    data.prepare(source.write_csv(), out, **QUIET)
    first = (out / data.MANIFEST_NAME).read_text()
    monkeypatch.setattr(outputs, "exchange", lambda *_: False)  # a system without an atomic exchange
    original_rename = Path.rename

    def killed_after_first_rename(self, target):
        if self.name.startswith(".out.partial-"):
            raise KeyboardInterrupt
        return original_rename(self, target)

    monkeypatch.setattr(Path, "rename", killed_after_first_rename)
    with pytest.raises(KeyboardInterrupt):
        data.prepare(source.root, out, **QUIET)
    monkeypatch.setattr(Path, "rename", original_rename)
    assert not out.exists() and any(p.name.startswith(".out.old-") for p in tmp_path.iterdir())

    messages = []
    source.rows = [["0", "person5_bacteria_1.jpeg", "Pnemonia", "TRAIN", "", "bacteria"]]  # the next run fails ...
    with pytest.raises(data.DataError, match="no usable"):
        data.prepare(source.write_csv(), out, echo=messages.append, progress=QUIET["progress"])
    assert any("restored" in m for m in messages)  # ... after putting the previous output back
    assert (out / data.MANIFEST_NAME).read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kaggle", "out"]


def test_the_swap_is_one_atomic_exchange_where_the_system_has_it(source, tmp_path, monkeypatch):
    source.add_good()
    out = tmp_path / "out"
    data.prepare(source.write_csv(), out, **QUIET)
    calls = []
    original = outputs.exchange

    def watched(first, second):
        exchanged = original(first, second)
        calls.append(exchanged)
        assert (Path(second) / outputs.MARKER_NAME).is_file()  # OUT is complete right after the swap
        return exchanged

    monkeypatch.setattr(outputs, "exchange", watched)
    data.prepare(source.root, out, **QUIET)
    assert calls and (calls[0] or not sys.platform.startswith("linux"))


def test_leftovers_of_killed_runs_are_cleaned_and_foreign_ones_kept(source, tmp_path):
    source.add_good()
    source.write_csv()
    ours = tmp_path / ".out.partial-abc123"
    (ours / "train" / "normal").mkdir(parents=True)
    (ours / outputs.MARKER_NAME).write_text(json.dumps({"kind": outputs.MARKER_KIND, "complete": False}))
    (tmp_path / ".out.partial-empty").mkdir()
    foreign = tmp_path / ".out.old-mine"
    foreign.mkdir()
    (foreign / "diary.txt").write_text("not hfxray's")
    messages = []
    data.prepare(source.root, tmp_path / "out", echo=messages.append, progress=QUIET["progress"])
    assert not ours.exists() and not (tmp_path / ".out.partial-empty").exists()
    assert (foreign / "diary.txt").read_text() == "not hfxray's"
    assert any("not hfxray's output; left in place" in m for m in messages)


def test_a_second_run_writing_next_to_the_same_out_is_refused(source, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    source.add_good()
    source.write_csv()
    descriptor = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        with pytest.raises(outputs.OutputError, match="another `hfxray data prepare`"):
            data.prepare(source.root, tmp_path / "out", **QUIET)
    finally:
        os.close(descriptor)


def test_an_os_error_is_one_line_too(monkeypatch, tmp_path, capsys):
    def denied(*_, **__):
        raise PermissionError(13, "Permission denied", str(tmp_path / "read-only"))

    monkeypatch.setattr(data, "prepare", denied)
    assert cli_main(["data", "prepare", "--source", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "Permission denied" in _one_error_line(capsys.readouterr().err)


# --- 6. degenerate data is refused before training ------------------------------------------------------------

@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_float_images_with_nan_or_inf_are_skipped_not_black(source, tmp_path, value):
    source.add_good()
    pixels = np.full((80, 80), value, dtype=np.float32)
    pixels[:40] = 0.5  # partly finite: still unusable
    tiff = source.add("float.tif", image=Image.fromarray(pixels, mode="F"), format="TIFF")
    with pytest.raises(ImageProblem, match="NaN or infinite"):
        load_rgb(tiff)
    data.prepare(source.write_csv(), tmp_path / "out", **QUIET)
    assert _manifest_by_source(tmp_path / "out")["float.tif"]["reason"].startswith("NaN or infinite pixel values")


BLANK = {  # every pixel one value, in each kind of file prepare converts
    "16bit.png": (Image.fromarray(np.full((80, 80), 1000, np.uint16)), "PNG", "1000 (I;16)"),
    "16bit-big-endian.tif": (Image.frombytes("I;16B", (80, 80), np.full((80, 80), 3000, ">u2").tobytes()), "TIFF",
                             "3000 (I;16B)"),  # PIL's getextrema refuses this mode
    "black.jpeg": (Image.new("L", (80, 80), 0), "JPEG", "0 (L)"),
    "grey.png": (Image.new("L", (80, 80), 128), "PNG", "128 (L)"),
    "colour.png": (Image.new("RGB", (80, 80), (10, 20, 30)), "PNG", "10, 20, 30"),
    "float.tif": (Image.fromarray(np.full((80, 80), 3.5, np.float32), mode="F"), "TIFF", "3.5 (F)"),
    "transparent.png": (Image.new("RGBA", (80, 80), (0, 0, 0, 0)), "PNG", "0, 0, 0"),
}


@pytest.mark.parametrize("name", sorted(BLANK))
def test_blank_images_are_skipped_not_windowed_or_kept(source, tmp_path, name):
    """A 16-bit image of one value used to become a black 8-bit one and be trained on as a radiograph."""
    image, kind, value = BLANK[name]
    source.add_good()
    path = source.add(name, image=image, format=kind)
    with pytest.raises(ImageProblem, match="blank image"):
        load_rgb(path)  # what predict and serve open
    data.prepare(source.write_csv(), tmp_path / "out", **QUIET)
    row = _manifest_by_source(tmp_path / "out")[name]
    assert row["status"] == "skipped" and row["reason"] == f"blank image: every pixel has the value {value}"


def test_an_image_with_one_varying_band_is_not_blank(source, tmp_path):
    pixels = np.dstack([np.full((80, 80), 200, np.uint8)] * 3 + [np.tile(np.arange(80, dtype=np.uint8), (80, 1))])
    source.add_good()
    source.add("faded.png", image=Image.fromarray(pixels, "RGBA"), format="PNG")  # alpha varies: composite varies
    data.prepare(source.write_csv(), tmp_path / "out", **QUIET)
    assert _manifest_by_source(tmp_path / "out")["faded.png"]["status"] == "kept"


@pytest.mark.parametrize("split", ["test", "validation"])
def test_a_split_with_one_class_is_refused_before_training(source, tmp_path, split):
    for i in range(6):
        source.add(f"IM-{i:04d}-0001.jpeg", format="JPEG")
        source.add(f"person{i}_virus_{i}.jpeg", "Pnemonia", "Virus", format="JPEG")
    source.add("IM-0100-0001.jpeg", split="TEST", format="JPEG")
    if split == "validation":
        source.add("person100_virus_1.jpeg", "Pnemonia", "Virus", split="TEST", format="JPEG")
    out = tmp_path / "out"
    data.prepare(source.write_csv(), out, val_fraction=0.3, seed=0, **QUIET)
    if split == "validation":  # move the validation split's virus images out of it
        for path in (out / "validation" / "virus").iterdir():
            path.rename(out / "train" / "virus" / path.name)
    with pytest.raises(data.DataError, match=f"{split} has no virus image.*To fix"):
        data.load_imagefolder(out)


def test_a_prepared_folder_missing_a_class_folder_is_one_line(source, tmp_path, capsys):
    source.add_good()
    out = tmp_path / "out"
    data.prepare(source.write_csv(), out, **QUIET)
    for path in (out / "test" / "normal").iterdir():
        path.unlink()
    (out / "test" / "normal").rmdir()
    with pytest.raises(data.DataError, match="test has no normal image"):
        data.load_imagefolder(out)


# --- predict / explain inputs and outputs ---------------------------------------------------------------------

def test_expand_paths_follows_linked_folders_reports_broken_links_and_survives_loops(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    _save(_gray(), other / "linked.png")
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    _save(_gray(), folder / "sub" / "real.png")
    (folder / "sub" / "to-other").symlink_to(other)
    (folder / "sub" / "loop").symlink_to(folder)
    (folder / "broken.jpeg").symlink_to(tmp_path / "gone.jpeg")
    (folder / "notes.txt").write_text("not an image")
    files = expand_paths([folder])
    assert [p.relative_to(folder).as_posix() for p in files] == [
        "broken.jpeg", "sub/real.png", "sub/to-other/linked.png"]
    with pytest.raises(ImageProblem, match="file not found"):
        load_rgb(files[0])


def test_predict_out_that_is_a_folder_is_refused_before_the_model_loads(tmp_path, capsys):
    from hfxray.predict import PredictError, check_output_path

    folder = tmp_path / "predictions.csv"
    folder.mkdir()
    with pytest.raises(PredictError, match="is a folder. To fix"):
        check_output_path(folder)
    image = _save(_gray(), tmp_path / "x.png")
    assert cli_main(["predict", "--model", str(tmp_path / "no-such-run"), str(image), "--out", str(folder)]) == 2
    assert "is a folder" in _one_error_line(capsys.readouterr().err)


# --- property: random and hostile names and layouts -----------------------------------------------------------

STEMS = ("IM-0001-0001", "person1_virus_1", "x", "X")
NAMES = tuple(stem + ext for stem in STEMS for ext in (".jpeg", ".png", ".tif", ".JPEG"))
HOSTILE = ("../../../x.jpeg", "../../../x.png", "../../../.bashrc", "../../../../.bashrc", "..", ".", "",
           "sub/x.jpeg", "..\\x.jpeg", "x\0.jpeg", "x\udcff.jpeg", "C:x.jpeg", "x\n.jpeg", "ABSOLUTE")
KINDS = ("jpeg", "png", "tiff", "rgba", "nan", "corrupt", "empty", "hardlink", "symlink", "outside-link",
         "broken-link", "folder")
EXAMPLES = int(os.environ.get("HFXRAY_HYPOTHESIS_EXAMPLES", "30"))

files_strategy = st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(("train", "test")),
                                    st.sampled_from(KINDS), st.integers(0, 3)), max_size=10)
rows_strategy = st.lists(st.tuples(
    st.one_of(st.sampled_from(NAMES), st.sampled_from(HOSTILE), st.text(max_size=6)),
    st.sampled_from((("Normal", ""), ("Pnemonia", "Virus"), ("Pnemonia", "bacteria"))),
    st.sampled_from(("TRAIN", "TEST", "VAL"))), max_size=12)


def _write_source_file(path: Path, kind: str, seed: int, outside: Path) -> None:
    folder = path.parent
    regular = sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink())
    if kind == "jpeg":
        _save(_gray((16, 16), seed), path, format="JPEG")
    elif kind == "png":
        _save(_gray((16, 16), seed), path, format="PNG")
    elif kind == "tiff":
        _save(_gray((16, 16), seed), path, format="TIFF")
    elif kind == "rgba":
        _save(Image.new("RGBA", (16, 16), (seed, 9, 9, 100)), path, format="PNG")
    elif kind == "nan":
        _save(Image.fromarray(np.full((16, 16), np.nan, np.float32), mode="F"), path, format="TIFF")
    elif kind == "corrupt":
        path.write_bytes(np.random.default_rng(seed).bytes(300))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "hardlink" and regular:
        os.link(regular[seed % len(regular)], path)
    elif kind == "symlink" and regular:
        path.symlink_to(regular[seed % len(regular)].name)
    elif kind == "outside-link":
        path.symlink_to(outside)
    elif kind == "broken-link":
        path.symlink_to(folder / "gone.jpeg")
    elif kind == "folder":
        path.mkdir()


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          derandomize="HFXRAY_HYPOTHESIS_EXAMPLES" not in os.environ,  # the default suite is reproducible
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(files=files_strategy, rows=rows_strategy, out_state=st.sampled_from(("absent", "empty", "ours", "foreign")),
       leftover=st.booleans())
def test_property_nothing_outside_out_changes_and_every_row_is_accounted_for(files, rows, out_state, leftover):
    import csv

    with tempfile.TemporaryDirectory() as temporary:
        tmp = Path(temporary)
        source = KaggleSource(tmp / "src")
        user = tmp / "user"
        user.mkdir()
        outside = _save(_gray((16, 16), 99), user / "x.jpeg", format="JPEG")
        for name in (".bashrc", "x.jpeg", "x.png"):  # where escaping names would land
            (tmp / name).write_text(f"the user's {name}\n")
        _save(_gray((16, 16), 5), source.root / "x.jpeg", format="JPEG")  # what escaping names would read
        _save(Image.new("RGBA", (16, 16)), source.root / "x.png", format="PNG")
        _save(_gray((16, 16), 6), source.root / ".bashrc", format="JPEG")
        for name, split, kind, seed in files:
            path = source.path(name, split)
            if not (path.exists() or path.is_symlink()):
                _write_source_file(path, kind, seed, outside)
        out = tmp / "out"
        if out_state != "absent":
            out.mkdir()
        if out_state == "ours":
            (out / outputs.MARKER_NAME).write_text(json.dumps({"kind": outputs.MARKER_KIND, "complete": True}))
            (out / "old.txt").write_text("an earlier output")
        elif out_state == "foreign":
            (out / data.MANIFEST_NAME).write_text("the user's own manifest\n")
        if leftover:
            (tmp / ".out.partial-killed").mkdir()
            (tmp / ".out.partial-killed" / outputs.MARKER_NAME).write_text(json.dumps({"kind": outputs.MARKER_KIND}))
        with (source.root / coronahack.CSV_NAME).open("w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
            writer = csv.writer(handle)
            writer.writerow(["", "X_ray_image_name", "Label", "Dataset_type", "Label_2_Virus_category",
                             "Label_1_Virus_category"])
            for number, (name, (label, label_1), split) in enumerate(rows):
                writer.writerow([number, str(outside) if name == "ABSOLUTE" else name, label, split, "", label_1])
        def ours(path: Path) -> bool:  # OUT itself, and what killed runs left next to it (cleaned up)
            return path == out or out in path.parents or path.relative_to(tmp).parts[0].startswith(".out.partial-")

        before = {p: v for p, v in _snapshot(tmp).items() if not ours(Path(p))}
        out_before = _snapshot(out) if out.exists() else None

        try:
            data.prepare(source.root, out, min_side=8, **QUIET)
            failed = None
        except data.DataError as err:
            failed = str(err)
            assert "\n" not in failed and "To fix:" in failed

        after = _snapshot(tmp)
        assert {p: v for p, v in after.items() if not ours(Path(p))} == before
        assert not any(Path(p).name.startswith(".out.") for p in after), "leftovers of the run remain"
        if out_state == "foreign":
            assert failed and "marker" in failed
        if failed:
            assert (_snapshot(out) if out.exists() else None) == out_before
            return
        manifest = data.read_manifest(out)
        csv_rows = Counter(r["csv_row"] for r in manifest if r["csv_row"])
        assert csv_rows == Counter(str(n) for n in range(1, len(rows) + 1))
        kept = [r for r in manifest if r["status"] == "kept"]
        assert all(r["status"] == "skipped" and r["reason"] for r in manifest if r["status"] != "kept")
        assert len({r["file"].casefold() for r in kept}) == len(kept)
        for row in kept:
            written = out / row["file"]
            assert written.is_file() and not written.is_symlink()
            assert out in written.resolve().parents
            if row["action"] in ("hard link", "copy"):
                origin = source.path(row["source_file"], row["Dataset_type"].upper())
                assert written.read_bytes() == origin.read_bytes()
        written_files = [p for p in out.rglob("*") if p.is_file() and p.parent != out]
        assert len(written_files) == len(kept)


@pytest.mark.parametrize("column", [0, 1, 5])
@pytest.mark.parametrize("line", [2, 5, 9])
def test_an_unclosed_quote_in_the_csv_stops_prepare_naming_its_line(source, tmp_path, capsys, line, column):
    # Python's csv reads a quote left open up to the end of the file: the rows after it would vanish into one field.
    source.add_good()
    root = source.write_csv()
    lines = (root / coronahack.CSV_NAME).read_text().splitlines()
    fields = lines[line - 1].split(",")
    fields[column] = '"' + fields[column]
    lines[line - 1] = ",".join(fields)
    (root / coronahack.CSV_NAME).write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert cli_main(["data", "prepare", "--source", str(root), "--out", str(out)]) == 2
    message = _one_error_line(capsys.readouterr().err)
    assert f"starts on line {line}" in message and "quote" in message
    assert not out.exists()


@pytest.mark.parametrize("planted", ["MY_NOTES.txt", "runs/bit/config.json", "train/normal/mine.jpeg",
                                     "validation/extra/a.png"])
def test_re_preparing_keeps_what_prepare_did_not_write(source, tmp_path, capsys, planted):
    source.add_good()
    root = source.write_csv()
    out = tmp_path / "prepared"
    assert cli_main(["data", "prepare", "--source", str(root), "--out", str(out)]) == 0
    (out / planted).parent.mkdir(parents=True, exist_ok=True)
    (out / planted).write_text("a user's work")
    capsys.readouterr()
    before = _snapshot(out)
    assert cli_main(["data", "prepare", "--source", str(root), "--out", str(out)]) == 2
    message = _one_error_line(capsys.readouterr().err)
    assert planted.split("/")[0] in message
    assert _snapshot(out) == before


def test_a_quoted_field_over_two_lines_that_closes_is_an_ordinary_row(source, tmp_path):
    source.add_good()
    root = source.write_csv()
    lines = (root / coronahack.CSV_NAME).read_text().splitlines()
    fields = lines[2].split(",")
    fields[-1] = '"a note\nover two lines"'
    lines[2] = ",".join(fields)
    (root / coronahack.CSV_NAME).write_text("\n".join(lines) + "\n")
    assert data.prepare(root, tmp_path / "out", **QUIET).kept_total > 0


@pytest.mark.parametrize("flag", [("--val-fraction", "1.5"), ("--val-fraction", "-0.1"), ("--test-fraction", "1"),
                                  ("--min-side", "0"), ("--min-side", "-5")])
def test_prepare_numbers_out_of_range_are_one_line_and_write_nothing(source, tmp_path, capsys, flag):
    source.add_good()
    source.write_csv()
    out = tmp_path / "out"
    assert cli_main(["data", "prepare", "--source", str(source.root), "--out", str(out), *flag]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {flag[0]} {flag[1]}") and "To fix" in line
    assert not out.exists()
