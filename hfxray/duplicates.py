"""The same picture twice: identical bytes, or a re-encoded / resized copy, in two sources or in one.

Two stages, because a perceptual hash alone cannot tell a copy from a similar chest:
1. Candidates. A perceptual hash (pHash: the signs of the low-frequency DCT coefficients of a 32x32 grey
   thumbnail, against their median) changes little when an image is re-encoded, resized or converted to grey.
   Pairs whose 64-bit hashes differ in at most `PHASH_THRESHOLD` bits are candidates.
2. Decision. A candidate pair is one picture only if the two 64x64 grey thumbnails correlate at least
   `MIN_CORRELATION` (Pearson, over the pixels). Identical bytes are always one picture.

Both thresholds were chosen from the CoronaHack and Cohen samples (docs/data.md; `scripts/phash_distances.py`
measures them into docs/results/duplicates/phash_distances.json, whose figures are quoted here). Children's chest
X-rays of one hospital look alike to the hash: different X-rays of the CoronaHack sample lie as close as 2 bits
apart (10 pairs at 4 bits or less, one of them a normal and a viral child's), so the hash only proposes. Copies
(JPEG quality 20-85, 96-512 px, grey or colour; 984 of them) lie at most 6 bits from their original and correlate
at least 0.989 with it; of the 317 pairs of different CoronaHack X-rays within 8 bits, the closest correlate 0.955.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.fft import dctn

from .imaging import load_standard_image

HASH_SIDE = 32  # thumbnail side whose DCT is taken
HASH_BITS_SIDE = 8  # the 8x8 lowest frequencies make the 64-bit hash
PHASH_THRESHOLD = 8  # bits: pairs this close are compared pixel by pixel (see the module docstring)
THUMB_SIDE = 64  # side of the grey thumbnails that are correlated
MIN_CORRELATION = 0.98  # thumbnails correlating at least this much are one picture
_CHUNK = 512  # rows of the distance matrix computed at once: memory stays O(_CHUNK * n)


def _grey(image):
    return image if image.mode == "L" else image.convert("L")


def phash_image(image) -> int:
    """64-bit perceptual hash of a PIL image (any mode)."""
    from PIL import Image

    grey = _grey(image).resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.float64)
    low = dctn(pixels, type=2, norm="ortho")[:HASH_BITS_SIDE, :HASH_BITS_SIDE]
    bits = (low > np.median(low)).flatten()
    return int(sum(1 << index for index, bit in enumerate(bits) if bit))


def thumbnail(image) -> np.ndarray:
    """The THUMB_SIDE x THUMB_SIDE grey thumbnail (uint8) that `correlation` compares."""
    from PIL import Image

    return np.asarray(_grey(image).resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS), dtype=np.uint8)


def correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson correlation of two thumbnails' pixels; 0 when either is flat (a flat image matches nothing)."""
    a = first.astype(np.float64).ravel()
    b = second.astype(np.float64).ravel()
    a -= a.mean()
    b -= b.mean()
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norm if norm else 0.0


def hamming(first: int, second: int) -> int:
    return (first ^ second).bit_count()


@dataclass(frozen=True, eq=False)
class Fingerprint:
    sha256: str
    phash: int
    thumbnail: np.ndarray


def fingerprint_image(image, data: bytes) -> Fingerprint:
    """Fingerprint of a decoded PIL image whose file holds `data`."""
    grey = _grey(image)
    return Fingerprint(hashlib.sha256(data).hexdigest(), phash_image(grey), thumbnail(grey))


def fingerprint(path: str | Path, max_pixels: int) -> Fingerprint:
    """Byte digest, perceptual hash and thumbnail of one image file (decoded as `prepare` decodes it)."""
    return fingerprint_image(load_standard_image(path, max_pixels=max_pixels), Path(path).read_bytes())


def same_picture(first: Fingerprint, second: Fingerprint) -> str:
    """Why the two are one picture ("identical bytes", or the hash distance and correlation), or "" if not."""
    if first.sha256 == second.sha256:
        return "identical bytes"
    bits = hamming(first.phash, second.phash)
    if bits > PHASH_THRESHOLD:
        return ""
    similarity = correlation(first.thumbnail, second.thumbnail)
    if similarity < MIN_CORRELATION:
        return ""
    return f"perceptual hash {bits} bits apart, thumbnails correlate {similarity:.3f}"


def distance_matrix(first: list[int], second: list[int]) -> np.ndarray:
    """Hamming distances [len(first), len(second)] between two lists of 64-bit hashes."""
    if not first or not second:
        return np.zeros((len(first), len(second)), dtype=np.int64)
    a = np.array(first, dtype=np.uint64)[:, None]
    b = np.array(second, dtype=np.uint64)[None, :]
    xor = a ^ b
    counts = np.zeros(xor.shape, dtype=np.int64)
    for shift in range(0, 64, 8):
        counts += _POPCOUNT[((xor >> np.uint64(shift)) & np.uint64(0xFF)).astype(np.int64)]
    return counts


def close_pairs(hashes: list[int], max_bits: int = PHASH_THRESHOLD) -> list[tuple[int, int]]:
    """Index pairs (i < j) of `hashes` at most `max_bits` apart, computed a block of rows at a time."""
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(hashes), _CHUNK):
        block = distance_matrix(hashes[start:start + _CHUNK], hashes)
        for i, j in zip(*(block <= max_bits).nonzero()):
            if start + int(i) < int(j):
                pairs.append((start + int(i), int(j)))
    return pairs


def find_same_pictures(prints: list[Fingerprint | None]) -> dict[tuple[int, int], str]:
    """Every pair (i < j) of fingerprints that are one picture, with the evidence; None entries match nothing."""
    present = [index for index, print_ in enumerate(prints) if print_ is not None]
    found: dict[tuple[int, int], str] = {}
    candidates = {(present[i], present[j]) for i, j in close_pairs([prints[k].phash for k in present])}
    by_digest: dict[str, list[int]] = {}
    for index in present:
        by_digest.setdefault(prints[index].sha256, []).append(index)
    for members in by_digest.values():  # identical bytes match whatever their hashes
        candidates.update((a, b) for position, a in enumerate(members) for b in members[position + 1:])
    for a, b in sorted(candidates):
        if evidence := same_picture(prints[a], prints[b]):
            found[(a, b)] = evidence
    return found


_POPCOUNT = np.array([bin(value).count("1") for value in range(256)], dtype=np.int64)
