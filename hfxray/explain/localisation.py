"""Where a map puts its mass, against what a map that looks nowhere in particular would put there.

lift(map, region) = (share of the map's mass inside the region) / (share of the image's area the region covers).

A uniform map scores exactly 1 for every region, so a lift means something only beside 1 and beside the region's
area share: a map with 99 % of its mass "inside the body" says nothing when the body covers 98.6 % of the image
(lift 1.004). Above 1 the map favours the region, below 1 it avoids it; the largest possible value is
1 / area share. The regions hfxray reports, on the image as the model sees it:

- `body_mask`: everything but the border, i.e. dark pixels (9 x 9 local mean below 0.2 on a 0-1 scale) connected
  to the image's edge (a black frame, air outside the patient). Dark lungs inside the chest stay body.
- `band_mask`: the outer band, a tenth of each side wide, where films carry their burnt-in markers, letters and
  text. A map drawn to such a marker has a band lift above 1.
- any box (`box_mask`), e.g. a planted marker's.
"""

from __future__ import annotations

import numpy as np

BORDER_THRESHOLD = 0.2  # a 0-1 local mean below this, connected to the edge, is border, not body
BORDER_WINDOW = 9
BAND_FRACTION = 0.1


def lift(heatmap: np.ndarray, region: np.ndarray) -> float:
    """Mass share inside `region` divided by its area share; NaN for a map without mass or an empty region (a region
    covering the whole image has lift 1 whatever the map)."""
    heatmap = np.asarray(heatmap, dtype=np.float64)
    region = np.asarray(region, dtype=bool)
    if heatmap.shape != region.shape:
        raise ValueError(f"map {heatmap.shape} and region {region.shape} differ")
    total, area = heatmap.sum(), region.mean()
    if not total > 0 or area == 0.0:
        return float("nan")
    return float(heatmap[region].sum() / total / area)


def body_mask(gray: np.ndarray) -> np.ndarray:
    """True on the body: not a dark pixel connected to the image's edge (`gray` in [0, 1])."""
    from scipy import ndimage

    dark = ndimage.uniform_filter(np.asarray(gray, dtype=np.float64), BORDER_WINDOW) < BORDER_THRESHOLD
    labels, _ = ndimage.label(dark)
    touching = np.setdiff1d(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]), [0])
    return ~np.isin(labels, touching)


def band_mask(shape: tuple[int, int], fraction: float = BAND_FRACTION) -> np.ndarray:
    """True on the outer band, `fraction` of each side wide (at least one pixel)."""
    height, width = shape
    rows, cols = max(1, round(height * fraction)), max(1, round(width * fraction))
    band = np.ones(shape, dtype=bool)
    band[rows:height - rows, cols:width - cols] = False
    return band


def box_mask(shape: tuple[int, int], top: int, left: int, height: int, width: int) -> np.ndarray:
    """True inside the box (clipped to the image)."""
    mask = np.zeros(shape, dtype=bool)
    mask[max(0, top):top + height, max(0, left):left + width] = True
    return mask


def localisation(heatmap: np.ndarray, gray: np.ndarray) -> dict[str, float]:
    """Body and band lifts of one map over the image the model saw (`gray` in [0, 1]), with the area shares.

    The uniform map's lift is 1 for both; the area shares say how far from 1 a map could go.
    """
    body = body_mask(gray)
    band = band_mask(body.shape)
    return {"body_lift": lift(heatmap, body), "body_area": float(body.mean()),
            "band_lift": lift(heatmap, band), "band_area": float(band.mean())}
