"""The same picture reached through two sources: identical bytes, or a re-encoded / resized copy.

A perceptual hash (pHash: the signs of the low-frequency DCT coefficients of a 32x32 grey thumbnail, against
their median) changes little when an image is re-encoded, resized or converted to grey, and a lot between two
different X-rays. Two images whose 64-bit hashes differ in at most `PHASH_THRESHOLD` bits are taken as one
picture. The threshold was chosen from the CoronaHack and Cohen samples (README, "Data";
`scripts/phash_distances.py` measures it): the 11 images shared by the two samples lie at 0 bits, JPEG
re-encoded and resized copies of them at 0-2 bits, and the closest pair of different X-rays across the two
samples at 8 bits (2 of 79,520 pairs; 0.3 % are under 16). 4 bits lies between the two.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HASH_SIDE = 32  # thumbnail side whose DCT is taken
HASH_BITS_SIDE = 8  # the 8x8 lowest frequencies make the 64-bit hash
PHASH_THRESHOLD = 4  # bits; see the module docstring and the README for the measured distributions


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix: `m @ x` is the DCT of the column vector x."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix


_DCT = _dct_matrix(HASH_SIDE)


def phash_image(image) -> int:
    """64-bit perceptual hash of a PIL image (any mode)."""
    from PIL import Image

    grey = image.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.float64)
    low = (_DCT @ pixels @ _DCT.T)[:HASH_BITS_SIDE, :HASH_BITS_SIDE]
    bits = (low > np.median(low)).flatten()
    return int(sum(1 << index for index, bit in enumerate(bits) if bit))


def hamming(first: int, second: int) -> int:
    return (first ^ second).bit_count()


@dataclass(frozen=True)
class Fingerprint:
    sha256: str
    phash: int


def fingerprint(path: str | Path, max_pixels: int) -> Fingerprint:
    """Byte digest and perceptual hash of one image file (decoded as `prepare` decodes it)."""
    from .imaging import load_standard_image

    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return Fingerprint(digest, phash_image(load_standard_image(path, max_pixels=max_pixels)))


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


_POPCOUNT = np.array([bin(value).count("1") for value in range(256)], dtype=np.int64)
