"""How far apart copies and different X-rays lie, to choose `hfxray.duplicates`' two thresholds.

    python scripts/phash_distances.py SOURCE_A SOURCE_B

Each source is any layout `hfxray data prepare` reads. Images with the same file name in both are the known
shared pairs; each of them is also re-encoded and resized several ways (the copies); every other pair, across the
two sources and within each, is a pair of different images. Printed: the perceptual-hash distances of each kind,
and the thumbnails' correlation of the copies and of the different pairs close enough to be candidates.
"""

from __future__ import annotations

import io
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from hfxray.duplicates import (MIN_CORRELATION, PHASH_THRESHOLD, correlation, distance_matrix, hamming,
                               phash_image, thumbnail)
from hfxray.imaging import load_standard_image
from hfxray.data.layouts import read_source, resolve_sources

COPIES = [(side, quality, grey) for side in (96, 200, 384, 512) for quality in (20, 50, 85) for grey in (False, True)]


def image_paths(folder: str) -> dict[str, Path]:
    spec = resolve_sources([folder])[0]
    return {r.source_file: r.source_dir / r.source_file for r in read_source(spec, lambda *_: None)
            if r.source_dir is not None and (r.source_dir / r.source_file).is_file()}


def copy_of(image: Image.Image, side: int, quality: int, grey: bool) -> Image.Image:
    copy = image.convert("L" if grey else "RGB")
    copy.thumbnail((side, side))
    buffer = io.BytesIO()
    copy.save(buffer, format="JPEG", quality=quality)
    return Image.open(buffer)


def describe(name: str, bits: list[int], similarities: list[float]) -> None:
    counts = Counter(bits)
    low = {k: counts[k] for k in sorted(counts) if k < 16}
    print(f"{name}: {len(bits)} pairs; hash bits min {min(bits)}, median {np.median(bits):g}; below 16: {low}")
    if similarities:
        print(f"  correlation of the {len(similarities)} pairs within {PHASH_THRESHOLD} bits: "
              f"min {min(similarities):.4f}, max {max(similarities):.4f}")


def main(first: str, second: str) -> None:
    paths = [image_paths(first), image_paths(second)]
    images = [{name: load_standard_image(path) for name, path in p.items()} for p in paths]
    hashes = [{name: phash_image(image) for name, image in i.items()} for i in images]
    thumbs = [{name: thumbnail(image) for name, image in i.items()} for i in images]
    shared = sorted(set(hashes[0]) & set(hashes[1]))
    describe("known shared images", [hamming(hashes[0][n], hashes[1][n]) for n in shared],
             [correlation(thumbs[0][n], thumbs[1][n]) for n in shared])
    copy_bits, copy_similarity = [], []
    for name in sorted(images[0])[::max(1, len(images[0]) // 40)]:  # about 40 originals of the first source
        for side, quality, grey in COPIES:
            copy = copy_of(images[0][name], side, quality, grey)
            copy_bits.append(hamming(phash_image(copy), hashes[0][name]))
            copy_similarity.append(correlation(thumbnail(copy), thumbs[0][name]))
    print(f"copies (JPEG quality {sorted({q for _, q, _ in COPIES})}, sides {sorted({s for s, _, _ in COPIES})} px, "
          f"grey or not): {len(copy_bits)}; hash bits max {max(copy_bits)} {dict(sorted(Counter(copy_bits).items()))}; "
          f"correlation min {min(copy_similarity):.4f}")
    for label, left, right in (("different, across the sources", 0, 1), ("different, within the first", 0, 0),
                               ("different, within the second", 1, 1)):
        a = [n for n in hashes[left] if n not in shared]
        b = [n for n in hashes[right] if n not in shared]
        matrix = distance_matrix([hashes[left][n] for n in a], [hashes[right][n] for n in b])
        rows, columns = np.nonzero(np.ones_like(matrix, dtype=bool) if left != right else np.triu(np.ones_like(
            matrix, dtype=bool), 1))
        bits = matrix[rows, columns].tolist()
        close = [(a[i], b[j]) for i, j in zip(rows, columns) if matrix[i, j] <= PHASH_THRESHOLD]
        describe(label, bits, [correlation(thumbs[left][x], thumbs[right][y]) for x, y in close])
    print(f"thresholds: candidates within {PHASH_THRESHOLD} bits, one picture at correlation >= {MIN_CORRELATION}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
