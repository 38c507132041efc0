"""`hfxray.duplicates`: copies are found, different chest X-rays are not, on every image of the real samples."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from hfxray import duplicates
from hfxray.data import coronahack
from hfxray.imaging import DEFAULT_MAX_PIXELS, load_standard_image


@pytest.fixture(scope="module")
def sample_images(sample_dir):
    return sorted(p for split in ("train", "test") for p in (sample_dir / coronahack.IMAGE_ROOT / split).iterdir())


@pytest.fixture(scope="module")
def sample_prints(sample_images):
    return [duplicates.fingerprint(path, DEFAULT_MAX_PIXELS) for path in sample_images]


def test_no_two_different_xrays_of_the_sample_are_one_picture(sample_prints):
    """All 259,560 pairs of the 721 CoronaHack images: children's X-rays that the hash puts within 2-8 bits of each
    other (317 pairs) are still told apart by their thumbnails."""
    hashes = [p.phash for p in sample_prints]
    close = duplicates.close_pairs(hashes)
    assert len(close) > 100 and min(duplicates.hamming(hashes[i], hashes[j]) for i, j in close) <= 4
    assert duplicates.find_same_pictures(sample_prints) == {}


def test_the_hash_alone_would_merge_a_normal_and_a_viral_child(sample_images, sample_prints):
    """Why the second stage exists: a pair the hash calls close, with different labels, and low correlation."""
    names = [p.name for p in sample_images]
    normal, virus = names.index("IM-0304-0001.jpeg"), names.index("person597_virus_1150.jpeg")
    first, second = sample_prints[normal], sample_prints[virus]
    assert duplicates.hamming(first.phash, second.phash) <= duplicates.PHASH_THRESHOLD
    assert duplicates.correlation(first.thumbnail, second.thumbnail) < duplicates.MIN_CORRELATION
    assert duplicates.same_picture(first, second) == ""


@settings(max_examples=40, deadline=None, database=None)
@given(index=st.integers(0, 720), side=st.integers(96, 640), quality=st.integers(20, 95), grey=st.booleans(),
       fmt=st.sampled_from(("JPEG", "PNG")))
def test_a_reencoded_or_resized_copy_is_the_same_picture(sample_images, sample_prints, index, side, quality, grey,
                                                         fmt):
    image = load_standard_image(sample_images[index])
    copy = image.convert("L" if grey else "RGB")
    copy.thumbnail((side, side))
    buffer = io.BytesIO()
    copy.save(buffer, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    reloaded = Image.open(io.BytesIO(buffer.getvalue()))
    reloaded.load()
    print_ = duplicates.fingerprint_image(reloaded, buffer.getvalue())
    assert duplicates.same_picture(sample_prints[index], print_).startswith(("perceptual hash", "identical bytes"))


def test_identical_bytes_match_whatever_the_hash(sample_prints):
    first = sample_prints[0]
    other = duplicates.Fingerprint(first.sha256, first.phash ^ ((1 << 64) - 1), np.zeros((64, 64), np.uint8))
    assert duplicates.same_picture(first, other) == "identical bytes"
    assert duplicates.find_same_pictures([first, None, other]) == {(0, 2): "identical bytes"}


def test_a_flat_thumbnail_matches_nothing():
    flat = np.full((64, 64), 128, np.uint8)
    assert duplicates.correlation(flat, flat) == 0.0
    a = duplicates.Fingerprint("a", 0, flat)
    b = duplicates.Fingerprint("b", 0, flat.copy())
    assert duplicates.same_picture(a, b) == ""


@settings(max_examples=60, deadline=None, database=None)
@given(hashes=st.lists(st.integers(0, (1 << 64) - 1), max_size=40), chunk=st.integers(1, 7),
       max_bits=st.integers(0, 64), seed=st.integers(0, 10))
def test_close_pairs_is_the_brute_force_answer_in_any_block_size(hashes, chunk, max_bits, seed):
    rng = random.Random(seed)  # near neighbours, so that small thresholds have pairs to find
    hashes = hashes + [h ^ (1 << rng.randrange(64)) for h in hashes[:10]]
    expected = [(i, j) for i in range(len(hashes)) for j in range(i + 1, len(hashes))
                if duplicates.hamming(hashes[i], hashes[j]) <= max_bits]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(duplicates, "_CHUNK", chunk)
        assert sorted(duplicates.close_pairs(hashes, max_bits)) == expected
