"""Bring a coarse map (one value per feature cell or token) back to input pixels, where the cells really are.

pytorch-grad-cam resizes with `cv2.resize`, which puts the centre of cell i at pixel `stride * i + (stride - 1) / 2`.
That holds for ViT patches, but not for a CNN whose strided convolutions and poolings pad by (k - 1) / 2 (BiT):
there cell i is centred on pixel `stride * i`, and the plain resize shifts the whole map down and right by half a
cell (15.5 px at stride 32). On 64-128 px inputs that moved tiny BiT's Grad-CAM off a planted 16 px square.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _source_coordinates(cells: int, pixels: int, top_left_anchored: bool) -> torch.Tensor:
    """For each output pixel, its position on the cell grid (cell i centred at i), for `grid_sample`'s [-1, 1]."""
    if cells == 1:
        return torch.zeros(pixels)
    stride = pixels / cells
    centre_of_cell_zero = 0.0 if top_left_anchored else (stride - 1) / 2
    position = (torch.arange(pixels, dtype=torch.float32) - centre_of_cell_zero) / stride
    return position / (cells - 1) * 2 - 1  # align_corners=True convention: -1 is cell 0's centre, 1 the last's


def upsample_to_input(maps: torch.Tensor | np.ndarray, size: tuple[int, int], top_left_anchored: bool = False
                      ) -> np.ndarray:
    """(B, h, w) cell maps -> (B, H, W) bilinear maps in [0, 1] (min-max per image), edges held at the border cell.

    `top_left_anchored`: the cells of a "same"-padded strided CNN (BiT) are centred on their top-left input pixel.
    The stride is taken as input size / cells, so the input must be a multiple of the network's stride (the
    processors' crops, 64 / 128 / 224 px, are).
    """
    maps = torch.as_tensor(maps).detach().float().cpu()
    batch, cells_y, cells_x = maps.shape
    grid_y = _source_coordinates(cells_y, size[0], top_left_anchored)
    grid_x = _source_coordinates(cells_x, size[1], top_left_anchored)
    rows, cols = torch.meshgrid(grid_y, grid_x, indexing="ij")
    grid = torch.stack([cols, rows], dim=-1).expand(batch, -1, -1, -1)
    upsampled = F.grid_sample(maps[:, None], grid, mode="bilinear", padding_mode="border", align_corners=True)[:, 0]
    low = upsampled.amin(dim=(1, 2), keepdim=True)
    high = upsampled.amax(dim=(1, 2), keepdim=True)
    return ((upsampled - low) / (high - low).clamp_min(1e-12)).numpy()
