"""Training/evaluation tensors from a prepared split, decoded once and derived from the model's processor.

JPEG decoding dominates a naive per-step image pipeline. Each image is decoded, converted and resized (as the
processor does: its shortest edge, or to a fixed size for `resize_mode: square`) once into a uint8 tensor (grayscale X-rays as one channel), so later epochs only
crop and normalise. Training and evaluation read those tensors from the decode cache
(`hfxray.cache`, built with `decode_resized`); `decode_split` keeps them in memory instead. The evaluation path
equals the processor's output (same resize, center crop, mean/std), so a model evaluated here behaves the same
under `pipeline("image-classification")`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from .errors import HfxrayError


class GeometryError(HfxrayError, ValueError):
    """A processor whose resize hfxray cannot reproduce."""


@dataclass(frozen=True)
class Geometry:
    """The processor's resize / crop / normalisation, read once."""

    # torchvision's `size` convention: an int resizes the shortest edge to it (aspect kept); (height, width) resizes
    # to exactly that (aspect not kept: `resize_mode: square`). Every decode and cache key takes it whole, so the two
    # kinds of tensors are never mixed.
    resize: int | tuple[int, int]
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_processor(cls, processor) -> "Geometry":
        size = processor.size
        if size.get("shortest_edge"):
            resize = int(size["shortest_edge"])
        elif size.get("height") and size.get("width"):  # transformers resizes to (height, width) exactly
            resize = (int(size["height"]), int(size["width"]))
        else:
            raise GeometryError(f"a processor resizing to {dict(size)}: hfxray reads only a shortest edge or a "
                                "height and width. To fix: use the processor hfxray saved with the run.")
        cropped = getattr(processor, "do_center_crop", False)
        if not cropped and isinstance(resize, tuple) and resize[0] != resize[1]:
            raise GeometryError(f"a processor resizing to {resize[0]} x {resize[1]} px without a center crop: hfxray's "
                                "tensors are square. To fix: give it a square size or a center crop.")
        crop = processor.crop_size["height"] if cropped else min_side(resize)
        return cls(resize=resize, crop=int(crop), mean=tuple(processor.image_mean), std=tuple(processor.image_std))


def min_side(resize: int | tuple[int, int]) -> int:
    """The shortest edge an image has after `resize` (see `Geometry.resize`)."""
    return min(resize) if isinstance(resize, (tuple, list)) else int(resize)


def decode_resized(image, resize: int | tuple[int, int]) -> torch.Tensor:
    """PIL image -> uint8 [C, H, W] (C = 1 for grayscale, else 3), resized as `Geometry.resize` says: the shortest
    edge at `resize` (an int), or to exactly (height, width)."""
    if image.mode not in ("L", "RGB"):
        from .imaging import to_standard_mode

        image = to_standard_mode(image)
    array = np.array(image)  # one writable copy out of PIL
    tensor = torch.from_numpy(array).unsqueeze(0) if array.ndim == 2 else torch.from_numpy(array).permute(2, 0, 1)
    size = [int(resize[0]), int(resize[1])] if isinstance(resize, (tuple, list)) else [int(resize)]
    return TF.resize(tensor, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def decode_split(split, resize: int | tuple[int, int], progress=None, desc: str = "decoding") -> tuple[list[torch.Tensor], list[int]]:
    """Decode every image of a datasets split once; returns (uint8 tensors, labels) in the split's order.

    Decoding runs on one thread per available core (at most 8): PIL's JPEG decoder and the resize release the
    GIL, so the first epoch (where decoding is nearly all the cost) ran 1.6-1.8x faster on 2 cores with identical
    tensors.
    """
    if progress is None:
        from tqdm.auto import tqdm as progress
    labels = [int(label) for label in split["label"]]

    def decode(index: int) -> torch.Tensor:
        return decode_resized(split[index]["image"], resize)

    with ThreadPoolExecutor(max_workers=min(8, available_cores())) as pool:
        images = list(progress(pool.map(decode, range(len(split))), desc=desc, unit="img", total=len(split)))
    return images, labels


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The image processors' center crop: offsets rounded down, so evaluation sees `pipeline`'s pixels
    (torchvision rounds half to even; hfxray/compat.py)."""
    height, width = image.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"a {height}x{width} image cannot be center-cropped to {size}x{size}. To fix: resize its "
                         "shortest edge to at least the crop size (the processor's `size` >= `crop_size`)")
    top, left = (height - size) // 2, (width - size) // 2
    return image[..., top:top + size, left:left + size]


class XrayTensorDataset(torch.utils.data.Dataset):
    """Decoded images -> {"pixel_values": uint8 crop, "labels"}; `normalise` (or `collate`) makes the floats.

    `images` is any sequence of uint8 [C, H, W] tensors: a list from `decode_split` or
    `hfxray.cache.DecodedImages` (which reads each image from the decode cache when indexed).

    Normalising whole batches in `collate` instead of each sample keeps later epochs cheap. Training
    augmentation (light, for chest X-rays): a random zoom up to `max_zoom` (a smaller window resized to the crop),
    a random `crop`-sized window, and horizontal flips only when `hflip` is set (the heart sits on the left:
    flips make anatomy that never occurs, and flip the burnt-in side markers). Evaluation: the processor's
    center crop.
    """

    def __init__(self, images: Sequence[torch.Tensor], labels: Sequence[int], geometry: Geometry, train: bool = False,
                 max_zoom: float = 1.0, hflip: bool = False, seed: int = 0):
        self.images, self.labels, self.geometry = images, labels, geometry
        self.train, self.max_zoom, self.hflip = train, max_zoom, hflip
        self.seed, self.epoch = seed, 0
        std = torch.tensor(geometry.std).view(1, 3, 1, 1)
        self._scale = 1.0 / (255.0 * std)  # (x / 255 - mean) / std = x * scale + shift
        self._shift = -torch.tensor(geometry.mean).view(1, 3, 1, 1) / std

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        """Called at each epoch start (see training.EpochToDataset) so augmentations differ between epochs."""
        self.epoch = epoch

    def _augment(self, image: torch.Tensor, index: int) -> torch.Tensor:
        # Randomness from (seed, epoch, index) alone, not from the global RNG, so that a resumed run draws what an
        # uninterrupted one would (the Trainer restores the global RNG late on resume: hfxray/compat.py).
        rng = random.Random(f"{self.seed}-{self.epoch}-{index}")
        crop = self.geometry.crop
        window = round(crop / rng.uniform(1.0, self.max_zoom)) if self.max_zoom > 1.0 else crop
        height, width = image.shape[-2:]
        top = rng.randint(0, height - window)
        left = rng.randint(0, width - window)
        image = image[:, top:top + window, left:left + window]
        if window != crop:  # zooming in only ever enlarges: plain bilinear suffices (antialiasing is for shrinking)
            enlarged = F.interpolate(image[None].float(), size=(crop, crop), mode="bilinear", align_corners=False)
            image = enlarged[0].round_().clamp_(0, 255).to(torch.uint8)
        if self.hflip and rng.random() < 0.5:
            image = image.flip(-1)
        return image

    def crop(self, index: int) -> torch.Tensor:
        """uint8 [3, crop, crop]: augmented for training, center-cropped for evaluation."""
        image = self.images[index]
        image = self._augment(image, index) if self.train else center_crop(image, self.geometry.crop)
        return image.expand(3, -1, -1) if image.shape[0] == 1 else image

    def normalise(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> the model's float input (the processor's rescale and mean/std)."""
        return crops.float().mul_(self._scale).add_(self._shift)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.crop(index), "labels": self.labels[index]}

    def collate(self, features: list[dict]) -> dict:
        """The Trainer's `data_collator`: stack the uint8 crops and normalise the batch at once."""
        return {"pixel_values": self.normalise(torch.stack([f["pixel_values"] for f in features])),
                "labels": torch.tensor([f["labels"] for f in features])}
