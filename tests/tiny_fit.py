"""The short training loop of the explanation tests' planted-signal models (tests/test_explain.py,
tests/test_explain_control.py): AdamW on batches of 32 until the smoothed loss is nearly zero or the steps run out."""

from __future__ import annotations

from typing import Callable

import torch

STOP_LOSS = 0.05  # a smoothed loss this low means the planted signal is learnt: more steps change nothing


def fit(model, learning_rate: float, steps: int, batches: Callable[[torch.Generator], tuple], seed: int = 0,
        forward: Callable | None = None):
    """Train `model` on `batches(generator) -> (inputs, labels)`, drawn from one generator seeded with `seed`, and
    return it in eval mode with no gradients left. `forward(model, inputs) -> logits` replaces
    `model(pixel_values=inputs).logits`."""
    forward = forward or (lambda model, inputs: model(pixel_values=inputs).logits)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    generator, smoothed = torch.Generator().manual_seed(seed), 0.7
    model.train()
    for _ in range(steps):
        inputs, labels = batches(generator)
        loss = torch.nn.functional.cross_entropy(forward(model, inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        smoothed = 0.9 * smoothed + 0.1 * loss.item()
        if smoothed < STOP_LOSS:
            break
    model.eval().zero_grad(set_to_none=True)
    return model
