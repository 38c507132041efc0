"""Saved map arrays live in the image file's pixel grid, and the lifts the summary reports mean what they say."""

from __future__ import annotations

import csv
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from PIL import Image

from hfxray.cli import main
from hfxray.explain import load_model
from hfxray.explain.arrays import input_geometry, to_file_grid
from hfxray.explain.localisation import band_mask, body_mask, box_mask, lift, localisation
from hfxray.models import build_processor


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models only: one torch thread (see conftest)."""


@pytest.mark.parametrize("mode", ["shortest_edge", "square"])
@pytest.mark.parametrize(("size", "resize", "crop"), [((64, 80), 64, 64), ((90, 70), 72, 64), ((300, 200), 144, 128),
                                                     ((50, 50), 40, 64)])
def test_the_geometry_is_the_processors_own(size, resize, crop, mode):
    """A file whose every pixel names its own row and column goes through the real processor: each input pixel must
    come from the file position `input_geometry` says."""
    height, width = size
    processor = build_processor(crop, resize, resize_mode=mode)
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    coded = np.stack([rows * 255 // (height - 1), cols * 255 // (width - 1), np.zeros_like(rows)], -1)
    image = Image.fromarray(coded.astype(np.uint8))
    seen = processor(images=image, return_tensors="pt")["pixel_values"][0]
    seen = ((seen * 0.5 + 0.5) * 255).numpy()  # mean = std = 0.5
    geometry = input_geometry(processor, size)
    (sy, sx), (top, left) = geometry.scale, geometry.offset
    inside = [(i, j) for i in (0, crop // 2, crop - 1) for j in (0, crop // 2, crop - 1)
              if 0 <= i + top < geometry.resized[0] and 0 <= j + left < geometry.resized[1]]
    assert inside
    for i, j in inside:
        file_row = (i + top + 0.5) * sy - 0.5
        file_col = (j + left + 0.5) * sx - 0.5
        assert seen[0, i, j] == pytest.approx(file_row * 255 / (height - 1), abs=255 / height * max(sy, 1) + 2)
        assert seen[1, i, j] == pytest.approx(file_col * 255 / (width - 1), abs=255 / width * max(sx, 1) + 2)


def test_a_map_lands_on_the_crop_and_nowhere_else():
    processor = build_processor(64, 72)
    geometry = input_geometry(processor, (144, 180))  # scale 2: resized to 72 x 90, crop columns 13..77
    assert geometry.resized == (72, 90) and geometry.offset == (4, 13)
    assert geometry.crop_box == (8.0, 26.0, 136.0, 154.0)
    input_map = np.random.default_rng(0).random((64, 64))
    placed = to_file_grid(input_map, geometry)
    assert placed.shape == (144, 180) and placed.dtype == np.float32
    outside = np.ones_like(placed, dtype=bool)
    outside[8:136, 26:154] = False
    assert (placed[outside] == 0).all() and (placed[~outside] > 0).all()
    # Back on the input grid: each input pixel is the mean of its 2 x 2 file pixels, up to bilinear smoothing.
    back = placed[8:136, 26:154].reshape(64, 2, 64, 2).mean(axis=(1, 3))
    assert np.corrcoef(back.ravel(), input_map.ravel())[0, 1] > 0.8
    np.testing.assert_allclose(back[1:-1, 1:-1].mean(), input_map[1:-1, 1:-1].mean(), atol=0.01)


def test_explain_saves_each_map_in_the_files_pixel_grid(tiny_models, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"wide": (64, 80), "tall": (150, 100), "big": (200, 260)}
    for stem, (height, width) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).save(images / f"{stem}.png")
    out = tmp_path / "maps"
    for kind, method in (("bit", "gradcam"), ("vit", "rollout")):
        assert main(["explain", "--model", str(tiny_models / kind), "--method", method, "--out", str(out),
                     str(images)]) == 0
        model, processor = load_model(tiny_models / kind)
        rows = {row["array"]: row for row in csv.DictReader(open(out / f"{kind}.{method}.csv"))}
        assert len(rows) == 3
        for stem, size in sizes.items():
            path = out / f"{stem}.{kind}.{method}.npz"
            assert path.name in rows
            with np.load(path, allow_pickle=False) as saved:
                heatmap, box, input_map = saved["map"], saved["crop_box"], saved["input_map"]
                assert heatmap.shape == size and tuple(saved["image_size"]) == size
                assert str(saved["method"]) == method and str(saved["model"]) == str((tiny_models / kind).resolve())
                assert str(saved["model_name"]) == kind
                assert int(saved["target_class"]) == (-1 if method == "rollout" else
                                                      model.config.label2id[str(saved["predicted"])])
            geometry = input_geometry(processor, size)
            assert tuple(box) == geometry.crop_box
            top, left, bottom, right = (int(round(v)) for v in box)
            outside = np.ones(size, dtype=bool)
            outside[top:bottom, left:right] = False
            assert (heatmap[outside] == 0).all()
            # The figure's map: the one explain computes on the model's input, recomputed here.
            from hfxray.explain import gradcam_map, rollout_map
            from hfxray.imaging import load_rgb

            pixels = processor(images=load_rgb(images / f"{stem}.png"), return_tensors="pt")["pixel_values"]
            expected = (gradcam_map(model, pixels) if method == "gradcam" else rollout_map(model, pixels))[0]
            np.testing.assert_allclose(input_map, expected, atol=1e-5)
            if size == (64, 80):  # scale 1: the file grid inside the crop is the input map itself
                np.testing.assert_allclose(heatmap[:, 8:72], expected, atol=1e-5)
            else:
                np.testing.assert_allclose(heatmap, to_file_grid(expected, geometry), atol=1e-5)


def test_an_npz_hfxray_did_not_write_is_not_replaced(tiny_models, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((70, 70), dtype=np.uint8) + np.arange(70, dtype=np.uint8)).save(images / "a.png")
    out = tmp_path / "maps"
    out.mkdir()
    np.savez_compressed(out / "a.bit.gradcam.npz", mine=np.ones(3))
    assert main(["explain", "--model", str(tiny_models / "bit"), "--method", "gradcam", "--out", str(out),
                 str(images)]) == 2
    assert "a.bit.gradcam.npz exists and was written by something else" in capsys.readouterr().err
    assert not (out / "a.bit.gradcam.png").exists()


# ---------------------------------------------------------------- lift


def test_a_uniform_map_has_lift_one_over_every_region():
    rng = np.random.default_rng(0)
    flat = np.ones((64, 64))
    for region in (band_mask((64, 64)), box_mask((64, 64), 5, 7, 16, 16), rng.random((64, 64)) < 0.3):
        assert lift(flat, region) == pytest.approx(1.0)
    assert lift(flat, np.ones((64, 64), dtype=bool)) == 1.0
    assert np.isnan(lift(np.zeros((64, 64)), band_mask((64, 64))))
    assert np.isnan(lift(flat, np.zeros((64, 64), dtype=bool)))


def test_lift_rewards_mass_on_the_region_and_punishes_mass_elsewhere():
    box = box_mask((128, 128), 10, 20, 16, 16)
    on_box = box.astype(float)
    assert lift(on_box, box) == pytest.approx(128 * 128 / 256)  # the ceiling: 1 / area share
    assert lift(1 - on_box, box) == 0.0
    band = band_mask((128, 128))
    assert band.mean() == pytest.approx(1 - (128 - 26) ** 2 / 128 ** 2)  # a 13 px band
    centre = 1 - band.astype(float)
    assert lift(centre, band) == 0.0 and lift(band.astype(float), band) == pytest.approx(1 / band.mean())


def test_the_body_is_what_the_dark_frame_leaves():
    gray = np.full((100, 100), 0.6)
    gray[:, :15] = 0.0  # a black frame on the left
    gray[40:60, 40:60] = 0.05  # dark lungs inside the body stay body
    body = body_mask(gray)
    assert not body[:, :10].any() and body[:, 25:].all()
    found = localisation(np.where(body, 1.0, 0.0), gray)
    assert found["body_lift"] == pytest.approx(1 / found["body_area"], rel=1e-6)
    assert 0.8 < found["body_area"] < 0.9
    flat = localisation(np.ones((100, 100)), gray)
    assert flat["body_lift"] == pytest.approx(1.0) and flat["band_lift"] == pytest.approx(1.0)


def test_a_square_resize_runs_maps_land_on_its_crop_of_a_real_non_square_xray(square_run, prepared_dir, tmp_path):
    """`--resize_mode square`: the whole film squashed to 72 x 72, then the 64 px centre crop, i.e. rows and columns
    4..68 of 72 of the file, each axis at its own scale."""
    image = next(path for path in sorted((prepared_dir / "test" / "virus").iterdir())
                 if Image.open(path).width > Image.open(path).height * 1.2)
    width, height = Image.open(image).size
    out = tmp_path / "maps"
    assert main(["explain", "--model", str(square_run), "--method", "gradcam", "--out", str(out), str(image)]) == 0
    [path] = out.glob("*.npz")
    with np.load(path, allow_pickle=False) as saved:
        heatmap, box = saved["map"], tuple(saved["crop_box"])
    expected = (4 * height / 72, 4 * width / 72, 68 * height / 72, 68 * width / 72)
    assert box == pytest.approx(expected)
    shortest = input_geometry(build_processor(64, 72), (height, width)).crop_box
    assert abs(shortest[1] - expected[1]) > 10 or abs(shortest[0] - expected[0]) > 10  # the other mode's box
    top, left, bottom, right = (int(round(v)) for v in box)
    outside = np.ones((height, width), dtype=bool)
    outside[top:bottom, left:right] = False
    assert heatmap.shape == (height, width) and (heatmap[outside] == 0).all()
