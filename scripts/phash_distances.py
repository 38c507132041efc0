"""Perceptual-hash distances between two image sources: known shared images, re-encoded copies, other pairs.

    python scripts/phash_distances.py SOURCE_A SOURCE_B

Each source is any layout `hfxray data prepare` reads. Images with the same file name in both are the known
shared pairs; each of them is also re-encoded and resized four ways; every other pair across the two sources is a
pair of different images. The three distributions are printed, to choose `hfxray.duplicates.PHASH_THRESHOLD`.
"""

from __future__ import annotations

import io
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from hfxray.duplicates import PHASH_THRESHOLD, distance_matrix, hamming, phash_image
from hfxray.imaging import load_standard_image
from hfxray.sources import read_source, resolve_sources


def image_paths(folder: str) -> dict[str, Path]:
    spec = resolve_sources([folder])[0]
    return {r.source_file: r.source_dir / r.source_file for r in read_source(spec, lambda *_: None)
            if r.source_dir is not None and (r.source_dir / r.source_file).is_file()}


def main(first: str, second: str) -> None:
    paths = [image_paths(first), image_paths(second)]
    hashes = [{name: phash_image(load_standard_image(path)) for name, path in p.items()} for p in paths]
    shared = sorted(set(hashes[0]) & set(hashes[1]))
    print(f"known shared images: {len(shared)}; distances {[hamming(hashes[0][n], hashes[1][n]) for n in shared]}")
    copies = []
    for name in shared:
        image = load_standard_image(paths[0][name])
        for side, quality, grey in ((256, 75, False), (384, 60, True), (200, 85, False), (512, 50, True)):
            copy = image.convert("L" if grey else "RGB")
            copy.thumbnail((side, side))
            buffer = io.BytesIO()
            copy.save(buffer, format="JPEG", quality=quality)
            copies.append(hamming(phash_image(Image.open(buffer)), hashes[0][name]))
    print(f"re-encoded/resized copies: {len(copies)}; distances {dict(sorted(Counter(copies).items()))}")
    left = [h for n, h in hashes[0].items() if n not in shared]
    right = [h for n, h in hashes[1].items() if n not in shared]
    distances = distance_matrix(left, right).ravel()
    low = Counter(distances[distances < 16].tolist())
    print(f"different pairs: {distances.size}; min {distances.min()}, 1st percentile {np.percentile(distances, 1):g}, "
          f"median {np.median(distances):g}; counts below 16: {dict(sorted(low.items()))}")
    print(f"current threshold: <= {PHASH_THRESHOLD} bits")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
