"""How far apart copies and different X-rays lie, to choose `hfxray.duplicates`' two thresholds.

    python scripts/phash_distances.py SOURCE_A SOURCE_B [--out FILE.json]

Each source is any layout `hfxray data prepare` reads. Images with the same file name in both are the known
shared pairs; each of them is also re-encoded and resized several ways (the copies); every other pair, across the
two sources and within each, is a pair of different images. Printed (and written to `--out` as JSON): the
perceptual-hash distances of each kind, the thumbnails' correlation of the copies and of the different pairs close
enough to be candidates, and how many of those close different pairs carry two different labels. On the two
samples it runs in seconds; docs/results/duplicates/phash_distances.json is its output for them.
"""

from __future__ import annotations

import argparse
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from hfxray.duplicates import (MIN_CORRELATION, PHASH_THRESHOLD, correlation, distance_matrix, hamming,
                               phash_image, thumbnail)
from hfxray.imaging import load_standard_image
from hfxray.data.layouts import read_source, resolve_sources

COPIES = [(side, quality, grey) for side in (96, 200, 384, 512) for quality in (20, 50, 85) for grey in (False, True)]


def image_paths(folder: str) -> tuple[dict[str, Path], dict[str, str]]:
    """{file: path} of the source's readable images, and {file: label} (empty for an excluded class)."""
    spec = resolve_sources([folder])[0]
    records = [r for r in read_source(spec, lambda *_: None)
               if r.source_dir is not None and (r.source_dir / r.source_file).is_file()]
    return ({r.source_file: r.source_dir / r.source_file for r in records},
            {r.source_file: r.label or "" for r in records})


def copy_of(image: Image.Image, side: int, quality: int, grey: bool) -> Image.Image:
    copy = image.convert("L" if grey else "RGB")
    copy.thumbnail((side, side))
    buffer = io.BytesIO()
    copy.save(buffer, format="JPEG", quality=quality)
    return Image.open(buffer)


def summary(bits: list[int], similarities: list[float]) -> dict:
    """Distances of one kind of pair; the correlation of those within the hash threshold."""
    counts = Counter(bits)
    return {"pairs": len(bits), "bits_min": int(min(bits)), "bits_max": int(max(bits)),
            "bits_median": float(np.median(bits)), "bits_counts_below_16": {str(k): counts[k] for k in sorted(counts)
                                                                            if k < 16},
            "within_threshold": len(similarities),
            "correlation_min": float(min(similarities)) if similarities else None,
            "correlation_max": float(max(similarities)) if similarities else None}


def describe(name: str, kind: dict) -> None:
    print(f"{name}: {kind['pairs']} pairs; hash bits min {kind['bits_min']}, median {kind['bits_median']:g}; "
          f"below 16: {kind['bits_counts_below_16']}")
    if kind["within_threshold"]:
        print(f"  correlation of the {kind['within_threshold']} pairs within {PHASH_THRESHOLD} bits: "
              f"min {kind['correlation_min']:.4f}, max {kind['correlation_max']:.4f}")


def measure(first: str, second: str) -> dict:
    """Every figure the script prints, as one JSON-ready dict."""
    (paths_a, labels_a), (paths_b, labels_b) = image_paths(first), image_paths(second)
    paths, labels = [paths_a, paths_b], [labels_a, labels_b]
    images = [{name: load_standard_image(path) for name, path in p.items()} for p in paths]
    hashes = [{name: phash_image(image) for name, image in i.items()} for i in images]
    thumbs = [{name: thumbnail(image) for name, image in i.items()} for i in images]
    shared = sorted(set(hashes[0]) & set(hashes[1]))
    result = {"sources": [Path(first).name, Path(second).name],
              "rule": {"phash_bits_at_most": PHASH_THRESHOLD, "correlation_at_least": MIN_CORRELATION},
              "shared": summary([hamming(hashes[0][n], hashes[1][n]) for n in shared],
                                [correlation(thumbs[0][n], thumbs[1][n]) for n in shared])}
    copy_bits, copy_similarity, originals = [], [], sorted(images[0])[::max(1, len(images[0]) // 40)]
    for name in originals:  # about 40 originals of the first source
        for side, quality, grey in COPIES:
            copy = copy_of(images[0][name], side, quality, grey)
            copy_bits.append(hamming(phash_image(copy), hashes[0][name]))
            copy_similarity.append(correlation(thumbnail(copy), thumbs[0][name]))
    result["copies"] = summary(copy_bits, copy_similarity) | {
        "originals": len(originals), "jpeg_quality": sorted({q for _, q, _ in COPIES}),
        "sides_px": sorted({s for s, _, _ in COPIES}), "correlation_min_all": float(min(copy_similarity))}
    for key, left, right in (("different_across", 0, 1), ("different_within_first", 0, 0),
                             ("different_within_second", 1, 1)):
        a = [n for n in hashes[left] if n not in shared]
        b = [n for n in hashes[right] if n not in shared]
        matrix = distance_matrix([hashes[left][n] for n in a], [hashes[right][n] for n in b])
        rows, columns = np.nonzero(np.ones_like(matrix, dtype=bool) if left != right else np.triu(np.ones_like(
            matrix, dtype=bool), 1))
        bits = matrix[rows, columns].tolist()
        close = [(a[i], b[j], int(matrix[i, j])) for i, j in zip(rows, columns) if matrix[i, j] <= PHASH_THRESHOLD]
        # Close pairs with two labels: a hash-only rule would merge a normal and a viral image into one.
        mixed = Counter(bits_apart for x, y, bits_apart in close
                        if labels[left][x] and labels[right][y] and labels[left][x] != labels[right][y])
        result[key] = summary(bits, [correlation(thumbs[left][x], thumbs[right][y]) for x, y, _ in close]) | {
            "two_labels_by_bits": {str(k): mixed[k] for k in sorted(mixed)}}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    result = measure(args.first, args.second)
    describe("known shared images", result["shared"])
    copies = result["copies"]
    print(f"copies (JPEG quality {copies['jpeg_quality']}, sides {copies['sides_px']} px, grey or not): "
          f"{copies['pairs']}; hash bits max {copies['bits_max']} {copies['bits_counts_below_16']}; "
          f"correlation min {copies['correlation_min_all']:.4f}")
    for label, key in (("different, across the sources", "different_across"),
                       ("different, within the first", "different_within_first"),
                       ("different, within the second", "different_within_second")):
        describe(label, result[key])
    print(f"thresholds: candidates within {PHASH_THRESHOLD} bits, one picture at correlation >= {MIN_CORRELATION}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
