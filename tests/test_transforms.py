"""The cached tensors: evaluation crops equal what `pipeline`'s processor makes; decoding order and labels hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hfxray.data import load_imagefolder
from hfxray.models import build_processor
from hfxray.transforms import Geometry, XrayTensorDataset, center_crop, decode_split

ONE_GRAY_LEVEL = 1 / 127.5  # in the [-1, 1] units of mean = std = 0.5


@pytest.mark.parametrize(("crop", "resize", "mode"), [(224, None, "shortest_edge"), (128, None, "shortest_edge"),
                                                     (224, None, "square"), (128, 144, "square")])
def test_evaluation_tensors_equal_the_processor_output(prepared_dir, crop, resize, mode):
    split = load_imagefolder(prepared_dir)["test"].select(range(24))
    processor = build_processor(crop, resize, resize_mode=mode)
    geometry = Geometry.from_processor(processor)
    images, labels = decode_split(split, geometry.resize, progress=lambda items, **_: items)
    dataset = XrayTensorDataset(images, labels, geometry)
    ours = dataset.collate([dataset[i] for i in range(len(dataset))])["pixel_values"]
    theirs = processor([example["image"] for example in split], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (24, 3, crop, crop)
    assert (ours - theirs).abs().max() <= ONE_GRAY_LEVEL + 1e-6
    assert labels == list(split["label"])
    side = resize or crop
    if mode == "square":  # every real image (none of them square) squashed to side x side before the crop
        assert geometry.resize == (side, side)
        assert {image.shape[1:] for image in images} == {(side, side)}
        assert all(example["image"].width != example["image"].height for example in split)
    else:
        assert geometry.resize == side and all(min(image.shape[1:]) == side < max(image.shape[1:]) for image in images)


def test_square_training_crops_are_the_processor_output_when_the_crop_is_the_whole_square(prepared_dir):
    """Resized to the crop size itself, a square image has one crop: training (no zoom, no flips) then sees exactly
    what `pipeline` sees; with the shortest edge, the training crop moves along the longer side."""
    split = load_imagefolder(prepared_dir)["train"].select(range(8))
    theirs = {}
    for mode in ("square", "shortest_edge"):
        processor = build_processor(64, resize_mode=mode)
        geometry = Geometry.from_processor(processor)
        images, labels = decode_split(split, geometry.resize, progress=lambda items, **_: items)
        dataset = XrayTensorDataset(images, labels, geometry, train=True, seed=3)
        ours = dataset.collate([dataset[i] for i in range(len(dataset))])["pixel_values"]
        theirs[mode] = processor([example["image"] for example in split], return_tensors="pt")["pixel_values"]
        difference = (ours - theirs[mode]).abs().amax(dim=(1, 2, 3))
        if mode == "square":
            assert difference.max() <= ONE_GRAY_LEVEL + 1e-6
        else:
            assert (difference > 0.1).sum() >= 4
    assert (theirs["square"] - theirs["shortest_edge"]).abs().mean() > 0.05  # the two modes differ


def test_a_processor_resize_hfxray_cannot_reproduce_is_refused():
    from types import SimpleNamespace

    from hfxray.transforms import GeometryError

    odd = SimpleNamespace(size={"longest_edge": 64}, crop_size={"height": 64, "width": 64}, do_center_crop=True,
                          image_mean=[0.5] * 3, image_std=[0.5] * 3)
    with pytest.raises(GeometryError, match="To fix"):
        Geometry.from_processor(odd)
    fixed = SimpleNamespace(size={"height": 48, "width": 80}, crop_size={"height": 32, "width": 32},
                            do_center_crop=True, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    assert Geometry.from_processor(fixed).resize == (48, 80)
    with pytest.raises(GeometryError, match="48 x 80 px without a center crop.*To fix"):
        Geometry.from_processor(SimpleNamespace(**{**vars(fixed), "do_center_crop": False}))


def test_a_fixed_size_processor_without_a_crop_gets_its_own_tensors(prepared_dir):
    """A model folder whose processor squashes to a fixed size and takes no crop (ViTImageProcessor's default
    kind): evaluation sees the whole squashed image, as `pipeline` does, not a crop of a shortest-edge resize."""
    from transformers import ViTImageProcessor

    split = load_imagefolder(prepared_dir)["test"].select(range(12))
    processor = ViTImageProcessor(size={"height": 64, "width": 64})
    geometry = Geometry.from_processor(processor)
    assert (geometry.resize, geometry.crop) == ((64, 64), 64)
    images, labels = decode_split(split, geometry.resize, progress=lambda items, **_: items)
    dataset = XrayTensorDataset(images, labels, geometry)
    ours = dataset.collate([dataset[i] for i in range(len(dataset))])["pixel_values"]
    theirs = processor([example["image"].convert("RGB") for example in split], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (12, 3, 64, 64)
    assert (ours - theirs).abs().max() <= ONE_GRAY_LEVEL + 1e-6


def test_center_crop_rounds_offsets_down_like_the_processors():
    image = torch.arange(5 * 8).reshape(1, 5, 8)
    assert center_crop(image, 2).tolist() == [[[11, 12], [19, 20]]]  # rows 1-2, columns 3-4 (torchvision: rows 2-3)
    with pytest.raises(ValueError, match="cannot be center-cropped"):
        center_crop(image, 6)


def test_decoding_keeps_split_order_and_converts_modes(tmp_path):
    from datasets import Dataset, Features, Image as ImageFeature, Value

    from hfxray.transforms import decode_resized

    rng = np.random.default_rng(0)
    modes = ["L", "RGB", "RGBA", "I;16", "P", "CMYK"]
    channels = {"L": 1, "I;16": 1, "RGB": 3, "RGBA": 3, "P": 3, "CMYK": 3}
    paths = []
    for index, mode in enumerate(modes):
        array = rng.integers(0, 255, (30 + 10 * index, 30), dtype=np.uint8)  # a different height for each image
        image = Image.fromarray(array.astype(np.uint16) * 257) if mode == "I;16" else Image.fromarray(array).convert(mode)
        paths.append(str(tmp_path / f"{index}.{'jpg' if mode == 'CMYK' else 'png'}"))
        image.save(paths[-1])
    split = Dataset.from_dict({"image": paths, "label": [0, 1, 0, 1, 1, 0]},
                              features=Features({"image": ImageFeature(), "label": Value("int64")}))
    images, labels = decode_split(split, 16, progress=lambda items, **_: items)
    assert labels == [0, 1, 0, 1, 1, 0]
    for index, (mode, decoded) in enumerate(zip(modes, images)):
        assert decoded.dtype == torch.uint8 and decoded.shape == (channels[mode], int(16 * (30 + 10 * index) / 30), 16)
        assert torch.equal(decoded, decode_resized(split[index]["image"], 16)), f"image {index} ({mode}) out of order"
