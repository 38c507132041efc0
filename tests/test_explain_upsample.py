"""Cell maps land where the cells are: plain resize for centred cells (ViT), top-left anchors for BiT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hfxray.explain.upsample import upsample_to_input
from hfxray.models import create_model


def test_centred_cells_match_a_plain_bilinear_resize():
    maps = torch.rand(3, 4, 5)
    expected = F.interpolate(maps[:, None], size=(64, 80), mode="bilinear", align_corners=False)[:, 0]
    low, high = expected.amin(dim=(1, 2), keepdim=True), expected.amax(dim=(1, 2), keepdim=True)
    np.testing.assert_allclose(upsample_to_input(maps, (64, 80)), ((expected - low) / (high - low)).numpy(),
                               atol=1e-5)


@pytest.mark.parametrize(("top_left_anchored", "centre"), [(False, (32 + 15.5, 64 + 15.5)), (True, (32, 64))])
def test_a_single_hot_cell_peaks_at_its_centre(top_left_anchored, centre):
    maps = torch.zeros(1, 4, 4)
    maps[0, 1, 2] = 1.0  # stride 32 on a 128 px input
    upsampled = upsample_to_input(maps, (128, 128), top_left_anchored)[0]
    rows, cols = np.nonzero(upsampled == upsampled.max())
    assert (rows.mean(), cols.mean()) == pytest.approx(centre)
    assert upsampled.min() == 0 and upsampled.max() == 1


def test_a_one_row_map_spreads_over_its_columns_and_holds_the_rows():
    maps = torch.tensor([[[0.0, 1.0]]])  # 1 x 2 cells on an 8 x 8 input: stride 8 x 4
    upsampled = upsample_to_input(maps, (8, 8))[0]
    assert np.ptp(upsampled, axis=0).max() == 0  # one row of cells: every pixel row is the same
    # centred cells at x = 1.5 and 5.5: 0 up to the first centre, 1 from the second, linear between
    np.testing.assert_allclose(upsampled[0], [0, 0, 0.125, 0.375, 0.625, 0.875, 1, 1], atol=1e-6)


def test_bit_cells_sit_on_their_top_left_pixel():
    """Probe what `top_left_anchored=True` assumes: a bright dot moves a final BiT cell most at stride * i."""
    torch.manual_seed(0)
    model, _, _ = create_model("bit", "tiny", image_size=128)
    features = {}
    model.bit.norm.register_forward_hook(lambda _module, _input, output: features.update(map=output))
    generator = torch.Generator().manual_seed(0)
    background = 0.1 * torch.randn(1, 3, 128, 128, generator=generator)
    corners = list(range(0, 124, 2))
    dotted = background.repeat(len(corners), 1, 1, 1)
    for index, corner in enumerate(corners):
        dotted[index, :, corner:corner + 4, corner:corner + 4] += 1.5
    with torch.no_grad():
        model(pixel_values=background)
        plain = features["map"]
        model(pixel_values=dotted)
    change = (features["map"] - plain).norm(dim=1)  # (dots, 4, 4)
    for cell in (1, 2):  # inner cells: the border ones are pulled by the padding
        peak = corners[int(change[:, cell, cell].argmax())] + 1.5  # the dot's centre
        assert abs(peak - 32 * cell) < abs(peak - (32 * cell + 15.5)), f"cell {cell} peaks at pixel {peak}"
