"""Maps as arrays in the pixel grid of the image file, so anyone can compute with them after the run.

The model sees a resized, centre-cropped copy of the file (the processor's shortest-edge resize, or its fixed
height x width resize for `resize_mode: square`, then its crop).
`input_geometry` gives that copy's place in the file, `to_file_grid` carries a map from the model's input grid back
onto the file's pixels (zero outside the analysed crop), and `save_map_array` writes one compressed `.npz` per image
beside its figure:

    map             (H, W) float32, H x W the image as read (`hfxray.imaging.load_rgb`); 0 outside the crop
    crop_box        (top, left, bottom, right) float64: the analysed crop in file pixel coordinates (edges, not
                    centres; clipped to the file)
    input_map       (h, w) float32: the map on the model's input grid, exactly as the figure draws it
    image_size      (H, W); method, model, model_name, layer, quantity, status: strings
    target_class    index the map explains (-1: class-agnostic, rollout), target_label, predicted, probability

Strings are stored as numpy unicode arrays, so `np.load(path)` reads everything without pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class InputGeometry:
    """Where the model's (crop x crop) input lies in a file of `size` (H, W), via the resized copy (rh, rw)."""

    size: tuple[int, int]
    resized: tuple[int, int]
    crop: tuple[int, int]
    offset: tuple[int, int]  # (top, left) of the crop in the resized copy; negative when the crop pads

    @property
    def scale(self) -> tuple[float, float]:
        """File pixels per resized pixel, (rows, columns)."""
        return self.size[0] / self.resized[0], self.size[1] / self.resized[1]

    @property
    def crop_box(self) -> tuple[float, float, float, float]:
        """(top, left, bottom, right) of the crop in file pixel coordinates, clipped to the file."""
        (sy, sx), (top, left), (ch, cw) = self.scale, self.offset, self.crop
        height, width = self.size
        return (max(0.0, top * sy), max(0.0, left * sx), min(float(height), (top + ch) * sy),
                min(float(width), (left + cw) * sx))


def _size_dict(value) -> dict:
    if value is None:
        return {}
    return {key: getattr(value, key, None) if not isinstance(value, dict) else value.get(key)
            for key in ("shortest_edge", "longest_edge", "height", "width")}


def input_geometry(processor, size: tuple[int, int]) -> InputGeometry:
    """The resize and centre crop `processor` applies to an image of `size` (H, W), by transformers' own rules.

    Handles the processors hfxray saves (shortest-edge resize, then centre crop) and fixed (height, width) resizes;
    anything else is refused, since a map could not be placed on the file.
    """
    from transformers.image_transforms import get_resize_output_image_size
    from transformers.image_utils import ChannelDimension

    height, width = size
    resize = _size_dict(getattr(processor, "size", None)) if getattr(processor, "do_resize", True) else {}
    if resize.get("shortest_edge") and not resize.get("longest_edge"):
        dummy = np.broadcast_to(np.zeros((), np.uint8), (1, height, width))  # a view: only its shape is read
        resized = tuple(get_resize_output_image_size(dummy, resize["shortest_edge"], default_to_square=False,
                                                     input_data_format=ChannelDimension.FIRST))
    elif resize.get("height") and resize.get("width"):
        resized = (resize["height"], resize["width"])
    elif not resize:
        resized = (height, width)
    else:
        raise ValueError(f"cannot place maps on the file for a processor resizing to {resize}")
    crop = _size_dict(getattr(processor, "crop_size", None)) if getattr(processor, "do_center_crop", False) else {}
    if crop.get("height") and crop.get("width"):
        crop_size = (crop["height"], crop["width"])
    else:
        crop_size = resized
    # transformers' torchvision backend: pad by (crop - side) // 2 when the crop is larger, else
    # int((side - crop) / 2); both are the same floor for the sizes that occur.
    offset = tuple(int((side - want) / 2.0) if want <= side else -((want - side) // 2)
                   for side, want in zip(resized, crop_size))
    return InputGeometry((height, width), resized, crop_size, offset)


def _axis_weights(pixels: int, scale: float, offset: int, cells: int):
    """For each file pixel along one axis: the two input-grid indices, the weight of the second, and whether the
    pixel's centre lies inside the crop (resizes here sample at pixel centres: align_corners=False)."""
    position = (np.arange(pixels) + 0.5) / scale - 0.5 - offset  # the pixel centre on the input grid
    inside = (position >= -0.5) & (position < cells - 0.5)
    position = np.clip(position, 0, cells - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, cells - 1)
    return low, high, position - low, inside


def to_file_grid(input_map: np.ndarray, geometry: InputGeometry) -> np.ndarray:
    """(H, W) float32: `input_map` (on the model's input grid) placed bilinearly on the file's pixels, 0 outside
    the crop."""
    input_map = np.asarray(input_map, dtype=np.float64)
    if input_map.shape != geometry.crop:
        raise ValueError(f"map {input_map.shape} is not the model's input grid {geometry.crop}")
    (sy, sx), (top, left) = geometry.scale, geometry.offset
    rows = _axis_weights(geometry.size[0], sy, top, geometry.crop[0])
    cols = _axis_weights(geometry.size[1], sx, left, geometry.crop[1])
    by_row = (1 - rows[2])[:, None] * input_map[rows[0]] + rows[2][:, None] * input_map[rows[1]]
    placed = (1 - cols[2])[None, :] * by_row[:, cols[0]] + cols[2][None, :] * by_row[:, cols[1]]
    placed[~rows[3]] = 0.0
    placed[:, ~cols[3]] = 0.0
    return placed.astype(np.float32)


def save_map_array(path: str | Path, input_map: np.ndarray, geometry: InputGeometry, **fields) -> Path:
    """Write the `.npz` described in the module docstring; `fields` are the scalar entries (strings, numbers)."""
    path = Path(path)
    arrays = {"map": to_file_grid(input_map, geometry), "crop_box": np.array(geometry.crop_box, dtype=np.float64),
              "input_map": np.asarray(input_map, dtype=np.float32),
              "image_size": np.array(geometry.size, dtype=np.int64)}
    arrays.update({key: np.array(value) for key, value in fields.items()})
    with open(path, "wb") as handle:  # a file handle: np.savez_compressed would append ".npz" to a str path
        np.savez_compressed(handle, **arrays)
    return path


def array_origin(path: str | Path) -> dict[str, str] | None:
    """{"hfxray-model": ..., "hfxray-method": ...} of an `.npz` hfxray wrote, None for any other file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {"hfxray-model": str(data["model"]), "hfxray-method": str(data["method"])}
    except (OSError, ValueError, KeyError, EOFError):
        return None
