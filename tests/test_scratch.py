"""From-scratch control (`--recipe scratch`): the small presets are the same classes in one size band.

That every kind's scratch run on the real sample learns clearly better than chance is checked in
tests/test_explain_real.py, on the session's `real_runs` its explanation checks read: one training per kind serves
both (and one test worker holds it). The refit path (train + validation, the recipe's fixed length) is covered by
`tests/test_cv.py::test_cv_trains_each_fold_once_resumes_and_refits`; the recipe's own figures come from `hfxray cv`
(docs/cv-log.md), not from these tests. No bar here is tuned on the test split."""

from __future__ import annotations

import pytest

from hfxray.models import create_model


@pytest.mark.parametrize("kind", ["vit", "bit", "hybrid"])
def test_small_preset_is_the_same_class_and_size_band(kind):
    model, processor, spec = create_model(kind, "small")
    parameters = sum(p.numel() for p in model.parameters())
    assert 100_000 <= parameters <= 3_000_000 and spec.image_size == 128
    assert processor.crop_size["height"] == 128
