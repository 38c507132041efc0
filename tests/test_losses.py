"""Label-smoothing cross entropy against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from hfxray.losses import LabelSmoothingCrossEntropy


def test_hand_computed_value():
    # logits (0, ln 3): p = (1/4, 3/4); label 1, alpha 0.2, K 2 -> targets (0.1, 0.9)
    logits = torch.tensor([[0.0, math.log(3.0)]])
    expected = -(0.1 * math.log(0.25) + 0.9 * math.log(0.75))
    loss = LabelSmoothingCrossEntropy(0.2)({"logits": logits}, torch.tensor([1]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_equals_cross_entropy_at_alpha_zero_and_torch_smoothing_otherwise():
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(16, 2, generator=generator), torch.randint(0, 2, (16,), generator=generator)
    outputs = {"logits": logits}
    assert LabelSmoothingCrossEntropy(0.0)(outputs, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item())
    smoothed = F.cross_entropy(logits, labels, label_smoothing=0.1)
    assert LabelSmoothingCrossEntropy(0.1)(outputs, labels).item() == pytest.approx(smoothed.item(), rel=1e-6)


def test_sum_over_items_for_the_trainer_ddp_scaling():
    """With num_items_in_batch the loss is sum / count (the Trainer multiplies by the world size under DDP)."""
    logits, labels = torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    loss_fn = LabelSmoothingCrossEntropy(0.1)
    per_sample = loss_fn.per_sample(logits, labels)
    assert loss_fn({"logits": logits}, labels, num_items_in_batch=8).item() == pytest.approx(per_sample.sum().item() / 8)


def test_rejects_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        LabelSmoothingCrossEntropy(1.0)
