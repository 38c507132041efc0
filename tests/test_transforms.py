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


@pytest.mark.parametrize("crop", [224, 128])
def test_evaluation_tensors_equal_the_processor_output(prepared_dir, crop):
    split = load_imagefolder(prepared_dir)["test"].select(range(24))
    processor = build_processor(crop)
    geometry = Geometry.from_processor(processor)
    images, labels = decode_split(split, geometry.resize, progress=lambda items, **_: items)
    dataset = XrayTensorDataset(images, labels, geometry)
    ours = dataset.collate([dataset[i] for i in range(len(dataset))])["pixel_values"]
    theirs = processor([example["image"] for example in split], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (24, 3, crop, crop)
    assert (ours - theirs).abs().max() <= ONE_GRAY_LEVEL + 1e-6
    assert labels == list(split["label"])


def test_center_crop_rounds_offsets_down_like_the_processors():
    image = torch.arange(5 * 8).reshape(1, 5, 8)
    assert center_crop(image, 2).tolist() == [[[11, 12], [19, 20]]]  # rows 1-2, columns 3-4 (torchvision: 2-3)


def test_decoding_keeps_split_order_and_converts_modes(tmp_path):
    from datasets import Dataset, Features, Image as ImageFeature, Value

    rng = np.random.default_rng(0)
    paths = []
    for index, mode in enumerate(["L", "RGB", "RGBA", "I;16", "P"]):
        array = rng.integers(0, 255, (40 + index, 30), dtype=np.uint8)
        image = Image.fromarray(array).convert(mode) if mode != "I;16" else Image.fromarray(array.astype(np.uint16) * 257)
        paths.append(str(tmp_path / f"{index}.png"))
        image.save(paths[-1])
    split = Dataset.from_dict({"image": paths, "label": [0, 1, 0, 1, 1]},
                              features=Features({"image": ImageFeature(), "label": Value("int64")}))
    images, labels = decode_split(split, 16, progress=lambda items, **_: items)
    assert labels == [0, 1, 0, 1, 1]
    assert [tuple(t.shape[-2:]) for t in images] == [(int(16 * (40 + i) / 30), 16) for i in range(5)]
    assert all(t.dtype == torch.uint8 and t.shape[0] in (1, 3) for t in images)
