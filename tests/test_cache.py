"""The decode cache: same tensors as decoding in memory, built once and reused, keyed by data and geometry."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from hfxray.cache import CacheError, DecodedImages, decoded_split, fingerprint, list_entries
from hfxray.data import CLASS_NAMES, MANIFEST_NAME, load_imagefolder, read_manifest
from hfxray.transforms import Geometry, XrayTensorDataset, decode_split

ONE_GRAY_LEVEL = 1 / 127.5  # in the [-1, 1] units of mean = std = 0.5
QUIET = lambda items, **_: items  # noqa: E731


def _no_decoding(*_args, **_kwargs):
    raise AssertionError("an image was decoded although the cache holds it")


@pytest.mark.parametrize("num_proc", [None, 2])
def test_cached_images_equal_the_in_memory_decoding(prepared_dir, tmp_path, num_proc):
    split = load_imagefolder(prepared_dir)["validation"]
    cached = decoded_split(prepared_dir, "validation", 72, cache_dir=tmp_path, num_proc=num_proc, split=split)
    images, labels = decode_split(split, 72, progress=QUIET)
    assert len(cached) == len(images) and cached.labels == labels
    for index, (ours, theirs) in enumerate(zip(cached, images)):
        assert ours.dtype == torch.uint8 and torch.equal(ours, theirs), f"image {index}"


def test_a_second_load_does_not_decode_and_maps_the_same_files(prepared_dir, tmp_path, monkeypatch):
    split = load_imagefolder(prepared_dir)["validation"]
    first = decoded_split(prepared_dir, "validation", 64, cache_dir=tmp_path, split=split)
    monkeypatch.setattr("hfxray.transforms.decode_resized", _no_decoding)
    second = decoded_split(prepared_dir, "validation", 64, cache_dir=tmp_path, split=split)
    assert second.arrow_files == first.arrow_files and all(torch.equal(a, b) for a, b in zip(first, second))
    [(folder, info)] = list_entries(tmp_path, prepared_dir)
    assert info["rows"] == len(split) and info["resize"] == 64 and folder.name.startswith("validation-64px-")
    assert not [p for p in (tmp_path / "hfxray-decoded").iterdir() if p.name.startswith(".")], "build left behind"
    (folder / info["files"][0]).unlink()  # a damaged entry is built again
    monkeypatch.undo()
    rebuilt = decoded_split(prepared_dir, "validation", 64, cache_dir=tmp_path, split=split)
    assert all(torch.equal(a, b) for a, b in zip(first, rebuilt))


def test_the_fingerprint_follows_the_geometry_and_the_prepared_set(prepared_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(prepared_dir, copy, copy_function=os.link)
    before = fingerprint(copy, "validation", 64)
    assert fingerprint(copy, "validation", 64) == before
    assert fingerprint(copy, "validation", 72) != before
    assert fingerprint(copy, "test", 64) != before
    with (copy / MANIFEST_NAME).open("a") as handle:
        handle.write("\n")
    changed = fingerprint(copy, "validation", 64)
    assert changed != before
    image = next((copy / "validation" / "virus").iterdir())
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))  # an image touched
    assert fingerprint(copy, "validation", 64) != changed
    touched = fingerprint(copy, "validation", 64)
    os.link(image, image.with_name("added-" + image.name))  # an image added
    assert fingerprint(copy, "validation", 64) != touched


def test_a_warm_cache_is_found_without_listing_the_split_through_datasets(prepared_dir, tmp_path, monkeypatch):
    first = decoded_split(prepared_dir, "validation", 64, cache_dir=tmp_path)  # loads the split itself to build
    manifest = {row["file"]: row["label"] for row in read_manifest(prepared_dir) if row["status"] == "kept"}
    assert sorted(first.files) == sorted(f for f in manifest if f.startswith("validation/"))
    assert [CLASS_NAMES[label] for label in first.labels] == [manifest[f] for f in first.files]

    def no_load_dataset(*_args, **_kwargs):
        raise AssertionError("load_dataset was called although the cache holds the split")

    monkeypatch.setattr("datasets.load_dataset", no_load_dataset)
    monkeypatch.setattr("hfxray.transforms.decode_resized", _no_decoding)
    second = decoded_split(prepared_dir, "validation", 64, cache_dir=tmp_path)
    assert second.files == first.files and all(torch.equal(a, b) for a, b in zip(first, second))


def test_reading_images_maps_no_pixels_into_the_process(prepared_dir, tmp_path):
    """Images are positioned reads into new tensors: nothing of the entry stays mapped, and every tensor is
    writable memory of its own."""
    cached = decoded_split(prepared_dir, "validation", 64, cache_dir=tmp_path)
    entry = str(Path(cached.arrow_files[0]).resolve())
    images = [cached[i] for i in range(len(cached))]
    maps = Path(f"/proc/{os.getpid()}/maps")
    if maps.exists():
        assert entry not in maps.read_text(), "the cache file is still memory-mapped"
    images[0][0, 0, 0] = 255 - int(images[0][0, 0, 0])  # writable, and not written through to the cache
    assert not torch.equal(images[0], cached[0])


def test_a_truncated_entry_says_how_to_fix(prepared_dir, tmp_path):
    cached = decoded_split(prepared_dir, "validation", 64, cache_dir=tmp_path)
    name = cached.arrow_files[0]
    size = os.path.getsize(name)
    with open(name, "r+b") as handle:
        handle.truncate(size - 1000)
    with pytest.raises(CacheError, match="To fix: run `hfxray data cache --clear`"):
        again = DecodedImages(cached.arrow_files)
        again[len(again) - 1]


def test_evaluation_tensors_from_the_cache_equal_the_processor_output(prepared_dir, tmp_path):
    from hfxray.models import build_processor

    split = load_imagefolder(prepared_dir)["test"]
    processor = build_processor(128)
    geometry = Geometry.from_processor(processor)
    images = decoded_split(prepared_dir, "test", geometry.resize, cache_dir=tmp_path, split=split).select(range(24))
    dataset = XrayTensorDataset(images, images.labels, geometry)
    ours = dataset.collate([dataset[i] for i in range(len(dataset))])["pixel_values"]
    theirs = processor([split[i]["image"] for i in range(24)], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (24, 3, 128, 128)
    assert (ours - theirs).abs().max() <= ONE_GRAY_LEVEL + 1e-6


def test_subsets_and_pickles_share_the_rows(prepared_dir, tmp_path):
    split = load_imagefolder(prepared_dir)["validation"]
    cached = decoded_split(prepared_dir, "validation", 64, cache_dir=tmp_path, split=split)
    fold = cached.select([5, 2, 7]).select([2, 0])  # rows 7 and 5
    assert fold.labels == [cached.labels[7], cached.labels[5]] and len(fold) == 2
    assert torch.equal(fold[0], cached[7]) and torch.equal(fold[-1], cached[5])
    again = pickle.loads(pickle.dumps(fold))
    assert isinstance(again, DecodedImages) and again.labels == fold.labels and torch.equal(again[0], cached[7])
    with pytest.raises(IndexError):
        fold[2]
    training = XrayTensorDataset(cached, cached.labels, Geometry(64, 56, (0.5,) * 3, (0.5,) * 3), train=True,
                                 max_zoom=1.2, hflip=True)
    batch = training.collate([training[i] for i in range(8)])  # augmentation over read-only views
    assert batch["pixel_values"].shape == (8, 3, 56, 56)


def test_an_unwritable_cache_place_says_how_to_fix(prepared_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    split = load_imagefolder(prepared_dir)["validation"]
    with pytest.raises(CacheError, match="To fix: .*--cache_dir"):
        decoded_split(prepared_dir, "validation", 64, cache_dir=blocker, split=split)


def test_data_cache_command_lists_and_clears(prepared_dir, tmp_path, capsys):
    from hfxray.cli import main

    split = load_imagefolder(prepared_dir)["validation"]
    decoded_split(prepared_dir, "validation", 64, cache_dir=tmp_path, split=split)
    stale = tmp_path / "hfxray-decoded" / ".validation-64px-0.building-999999999-abcd"
    stale.mkdir()
    older = tmp_path / "hfxray-decoded" / "validation-64px-older"  # an entry of an earlier cache layout
    older.mkdir()
    (older / "hfxray-cache.json").write_text('{"kind": "hfxray decoded-image cache", "version": 0, "files": []}')
    unrelated = tmp_path / "hfxray-decoded" / "notes"  # not an entry: never deleted
    unrelated.mkdir()
    (unrelated / "hfxray-cache.json").write_text("{}")
    assert main(["data", "cache", "--cache-dir", str(tmp_path), "--data-dir", str(prepared_dir)]) == 0
    out = capsys.readouterr().out
    assert "validation" in out and "64 px" in out and "1 entry" in out
    assert main(["data", "cache", "--cache-dir", str(tmp_path)]) == 0
    assert "1 entry of an older cache layout or damaged" in capsys.readouterr().out
    assert main(["data", "cache", "--cache-dir", str(tmp_path), "--clear"]) == 0
    assert "cleared 2 entries and 1 unfinished build(s)" in capsys.readouterr().out
    assert list_entries(tmp_path) == [] and not stale.exists() and not older.exists() and unrelated.exists()


@pytest.mark.slow
def test_a_second_training_run_does_not_decode_again(prepared_dir, tmp_path, monkeypatch):
    from hfxray.arguments import parse_config
    from hfxray.training import train

    def arguments(out):
        return parse_config(["--model", "bit", "--preset", "tiny", "--recipe", "scratch", "--data-dir",
                           str(prepared_dir), "--output-dir", str(out), "--cache_dir", str(tmp_path / "cache"),
                           "--max_steps", "2", "--max_train_samples", "32", "--per_device_train_batch_size", "8",
                           "--report_to", "none", "--save_strategy", "no", "--eval_strategy", "no",
                           "--load_best_model_at_end", "false", "--average_last_epochs", "0",
                           "--image_size", "64", "--resize_size", "72"])

    assert train(arguments(tmp_path / "first")).metrics["global_step"] == 2
    entries = list_entries(tmp_path / "cache", prepared_dir)
    assert sorted(info["split"] for _, info in entries) == ["train", "validation"]
    monkeypatch.setattr("hfxray.transforms.decode_resized", _no_decoding)
    assert train(arguments(tmp_path / "second")).metrics["global_step"] == 2
    assert list_entries(tmp_path / "cache", prepared_dir) == entries
    # A cross-validation fold (rows pooled from train + validation) reads the same entries.
    from hfxray.cv import pool_rows, pool_selector

    rows = pool_rows(prepared_dir)
    fold = [row["file"] for row in rows[::2]]
    assert train(arguments(tmp_path / "fold"), select_splits=pool_selector(prepared_dir, fold, None)).metrics[
        "global_step"] == 2
    assert list_entries(tmp_path / "cache", prepared_dir) == entries


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_read_the_same_images(prepared_dir, tmp_path, context):
    """Forked workers inherit the row index and open their own descriptors; spawned ones get it pickled."""
    cached = decoded_split(prepared_dir, "validation", 64, cache_dir=tmp_path).select(range(12))
    first = cached[0]  # the parent has opened its descriptor before the workers start
    loader = torch.utils.data.DataLoader(cached, batch_size=None, num_workers=2, multiprocessing_context=context)
    images = list(loader)
    assert len(images) == 12 and torch.equal(images[0], first)
    assert all(torch.equal(a, cached[i]) for i, a in enumerate(images))


def test_an_image_that_no_longer_decodes_names_itself(prepared_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(prepared_dir, copy)  # real copies: the damage below must not reach the fixture
    image = sorted((copy / "validation" / "virus").iterdir())[0]
    image.unlink()
    image.write_bytes(b"not an image any more")
    with pytest.raises(CacheError, match=f"{image.name}: cannot decode it.*To fix: re-run `hfxray data prepare`"):
        decoded_split(copy, "validation", 64, cache_dir=tmp_path / "cache")
    assert list_entries(tmp_path / "cache") == []


def test_bytes_overwritten_mid_file_are_never_used_the_entry_is_rebuilt(prepared_dir, tmp_path, monkeypatch):
    import logging

    import hfxray.cache as cache

    split = load_imagefolder(prepared_dir)["validation"]
    first = decoded_split(prepared_dir, "validation", 64, cache_dir=tmp_path, split=split)
    originals = [image.clone() for image in first]
    [(folder, info)] = list_entries(tmp_path, prepared_dir)
    arrow = folder / info["files"][0]
    size = arrow.stat().st_size
    with arrow.open("r+b") as handle:  # pixels in the middle of the file: the index and the first row are intact
        handle.seek(size // 2)
        handle.write(bytes(255 - b for b in handle.read(4096)))
        handle.seek(size // 2)
    assert cache.damaged_files(folder, info) == [info["files"][0]]
    # Unchecked, the damage is silent: same shapes, other pixels (what the checksum is there to stop).
    monkeypatch.setattr(cache, "VERIFY", False)
    unchecked = decoded_split(prepared_dir, "validation", 64, cache_dir=tmp_path, split=split)
    assert sum(not torch.equal(a, b) for a, b in zip(unchecked, originals)) >= 1
    del unchecked
    monkeypatch.setattr(cache, "VERIFY", True)
    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger(cache.__name__).addHandler(handler)  # the hfxray logger may not propagate (logs.configure)
    try:
        rebuilt = decoded_split(prepared_dir, "validation", 64, cache_dir=tmp_path, split=split)
    finally:
        logging.getLogger(cache.__name__).removeHandler(handler)
    [warning] = warnings
    assert "checksum mismatch" in warning and "rebuilding" in warning and info["files"][0] in warning
    assert all(torch.equal(a, b) for a, b in zip(rebuilt, originals))
    [(_, again)] = list_entries(tmp_path, prepared_dir)
    assert not cache.damaged_files(folder, again) and again["crc32"] == info["crc32"]


def test_data_cache_lists_an_entry_for_every_folder_that_reads_it(prepared_dir, tmp_path, capsys):
    """A copy of a prepared folder has the same fingerprint, so its runs read the original's entries: `data cache
    --data-dir COPY` lists them under the copy (saying where they were built), and no entry is left out."""
    from hfxray.cli import main

    copy = tmp_path / "copy"
    shutil.copytree(prepared_dir, copy)  # copy2 keeps sizes and times: the same fingerprint
    decoded_split(prepared_dir, "validation", 64, cache_dir=tmp_path / "cache",
                  split=load_imagefolder(prepared_dir)["validation"])
    assert len(list_entries(tmp_path / "cache", copy)) == 1 == len(list_entries(tmp_path / "cache", prepared_dir))
    assert main(["data", "cache", "--cache-dir", str(tmp_path / "cache"), "--data-dir", str(copy)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "validation" in line and " px " in line)
    assert f"{copy.resolve()} (built from {prepared_dir.resolve()}, the same files)" in line
    assert main(["data", "cache", "--cache-dir", str(tmp_path / "cache"), "--data-dir", str(prepared_dir)]) == 0
    assert "built from" not in capsys.readouterr().out
    (copy / "validation" / "normal" / next((copy / "validation" / "normal").iterdir()).name).unlink()
    assert list_entries(tmp_path / "cache", copy) == []  # a changed copy reads entries of its own


def test_square_and_shortest_edge_entries_are_never_served_for_each_other(prepared_dir, tmp_path, monkeypatch,
                                                                         capsys):
    """`resize_mode: square` decodes to (72, 72); the same resize as a shortest edge is another entry, keyed and
    named apart, so neither run can read the other's tensors."""
    from hfxray.cache import describe

    split = load_imagefolder(prepared_dir)["validation"]
    assert fingerprint(prepared_dir, "validation", (72, 72)) != fingerprint(prepared_dir, "validation", 72)
    square = decoded_split(prepared_dir, "validation", (72, 72), cache_dir=tmp_path, split=split)
    expected, _ = decode_split(split, (72, 72), progress=QUIET)
    assert all(torch.equal(ours, theirs) for ours, theirs in zip(square, expected))
    assert {tuple(image.shape[1:]) for image in square} == {(72, 72)}
    shortest = decoded_split(prepared_dir, "validation", 72, cache_dir=tmp_path, split=split)  # built, not served
    assert all(min(image.shape[1:]) == 72 < max(image.shape[1:]) for image in shortest)
    entries = {folder.name.rsplit("-", 1)[0]: info["resize"] for folder, info in list_entries(tmp_path, prepared_dir)}
    assert entries == {"validation-72x72px": [72, 72], "validation-72px": 72}
    monkeypatch.setattr("hfxray.transforms.decode_resized", _no_decoding)  # both now found, each its own
    again = decoded_split(prepared_dir, "validation", (72, 72), cache_dir=tmp_path, split=split)
    assert again.arrow_files == square.arrow_files
    assert decoded_split(prepared_dir, "validation", 72, cache_dir=tmp_path).arrow_files == shortest.arrow_files
    describe(tmp_path, prepared_dir, echo=print)
    listed = capsys.readouterr().out
    assert "validation 72x72 px" in listed and "validation    72 px" in listed
