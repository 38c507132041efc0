"""Label-smoothing cross entropy for the Trainer's `compute_loss_func`.

Smoothed targets t_ls = (1 - alpha) * onehot(y) + alpha / K. The loss is returned as sum / num_items_in_batch
when the Trainer passes that count: under DDP the Trainer counts items across all processes and multiplies each
process's loss by the world size, so a per-process mean would be scaled wrongly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class LabelSmoothingCrossEntropy:
    """Callable `(outputs, labels, num_items_in_batch=None) -> loss`, usable as `Trainer(compute_loss_func=...)`."""

    def __init__(self, alpha: float = 0.1):
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"label smoothing alpha={alpha} must lie in [0, 1). To fix: use e.g. 0.1, or 0 for plain CE")
        self.alpha = alpha

    def per_sample(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """-sum_k t_ls[k] * log_softmax(logits)[k] for each sample."""
        log_probs = F.log_softmax(logits.float(), dim=-1)
        num_classes = logits.shape[-1]
        targets = F.one_hot(labels.long(), num_classes).to(log_probs.dtype)
        smoothed = (1.0 - self.alpha) * targets + self.alpha / num_classes
        return -(smoothed * log_probs).sum(dim=-1)

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        losses = self.per_sample(logits, labels)
        if num_items_in_batch is None:
            return losses.mean()
        return losses.sum() / torch.as_tensor(num_items_in_batch, device=losses.device, dtype=losses.dtype)
