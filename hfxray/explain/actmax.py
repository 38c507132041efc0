"""Activation maximization: the input that THIS model scores highest for a class (Simonyan et al. 2014).

Gradient ascent on the target logit from a gray image with a little noise. The image is optimised in display
space [0, 1] and normalised with the processor's mean/std on every step, which keeps it inside the range the
processor can produce ((0 - mean)/std .. (1 - mean)/std) and makes decoding exact. Random shifts (jitter), a
total-variation penalty and a light blur on every step keep high-frequency adversarial noise out, so the result
shows structure the model responds to rather than pixel-level tricks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class ActMaxResult:
    """One class's optimised input and how the logits moved (logits are of the un-jittered image)."""

    target_class: int
    image: np.ndarray  # (H, W, 3) uint8, the decoded input: pixel_values * std + mean
    image_float: np.ndarray  # the same in [0, 1] before rounding: contrast stretching needs the fine steps
    pixel_values: torch.Tensor  # (1, 3, H, W), what the model scores
    start_logits: np.ndarray  # (num_classes,) of the starting gray image
    end_logits: np.ndarray  # (num_classes,) of the final image
    target_trajectory: np.ndarray  # (steps,) target logit at each step (of the jittered input being optimised)

    @property
    def rise(self) -> float:
        """How far the target logit climbed."""
        return float(self.end_logits[self.target_class] - self.start_logits[self.target_class])


def input_spec(processor) -> tuple[tuple[int, int], list[float], list[float]]:
    """(height, width), mean, std of what `processor` feeds the model."""
    data_config = getattr(processor, "data_config", None)  # TimmWrapperImageProcessor
    if data_config:
        return tuple(data_config["input_size"][-2:]), list(data_config["mean"]), list(data_config["std"])
    crop = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {}
    if "height" not in crop or getattr(processor, "image_mean", None) is None:
        raise ValueError(f"cannot tell the input size and mean/std of {type(processor).__name__}. To fix: pass a "
                         "processor with crop_size/size {height, width}, image_mean and image_std")
    return (crop["height"], crop["width"]), list(processor.image_mean), list(processor.image_std)


def _total_variation(image: torch.Tensor) -> torch.Tensor:
    return (image[..., 1:, :] - image[..., :-1, :]).abs().mean() + (image[..., :, 1:] - image[..., :, :-1]).abs().mean()


def activation_maximization(model: nn.Module, processor, target_class: int, steps: int = 200, lr: float = 0.05,
                            tv_weight: float = 0.5, jitter: int | None = None, blur_every: int = 1,
                            blur_sigma: float = 1.0, grayscale: bool = True, start_noise: float = 0.1,
                            seed: int = 0) -> ActMaxResult:
    """Optimise an input to raise `target_class`'s logit of `model`; the weights are not changed.

    `grayscale` optimises one channel repeated three times: the models only ever saw gray X-rays, so colour
    would be freedom the data never had. `start_noise` is the std of the noise on the gray start: from a nearly
    flat image a saturated model sits on a plateau where gradient ascent has no direction to follow. `jitter` is the largest random shift in pixels
    (default: 1/16 of the side); `blur_every` applies a Gaussian blur of `blur_sigma` pixels every so many steps
    (0: never).
    """
    from torchvision.transforms.functional import gaussian_blur

    (height, width), mean, std = input_spec(processor)
    if not 0 <= target_class < model.config.num_labels:
        raise ValueError(f"target_class {target_class} is not one of the model's {model.config.num_labels} classes")
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    mean_t = torch.tensor(mean, device=device, dtype=dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device, dtype=dtype).view(1, 3, 1, 1)
    jitter = max(1, min(height, width) // 16) if jitter is None else jitter
    generator = torch.Generator().manual_seed(seed)
    channels = 1 if grayscale else 3
    start = 0.5 + start_noise * torch.randn(1, channels, height, width, generator=generator)
    image = start.to(device=device, dtype=dtype).clamp(0, 1).requires_grad_(True)
    optimizer = torch.optim.Adam([image], lr=lr)

    def normalise(display: torch.Tensor) -> torch.Tensor:
        return (display.expand(-1, 3, -1, -1) - mean_t) / std_t

    def logits_of(display: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return model(pixel_values=normalise(display)).logits[0].float().cpu().numpy()

    was_training = model.training
    model.eval()
    trajectory = []
    try:
        start_logits = logits_of(image)
        for step in range(steps):
            dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=generator))
            shifted = torch.roll(image, shifts=(dy, dx), dims=(-2, -1))
            target = model(pixel_values=normalise(shifted)).logits[0, target_class]
            loss = -target + tv_weight * _total_variation(image)
            # Gradient for the image only: the model's weights must not collect gradients.
            (image.grad,) = torch.autograd.grad(loss, image)
            optimizer.step()
            with torch.no_grad():
                if blur_every and (step + 1) % blur_every == 0:
                    image.copy_(gaussian_blur(image, kernel_size=2 * math.ceil(2 * blur_sigma) + 1, sigma=blur_sigma))
                image.clamp_(0, 1)
            trajectory.append(float(target.detach()))
        end_logits = logits_of(image)
    finally:
        model.train(was_training)
    final = image.detach().expand(-1, 3, -1, -1)
    decoded = final[0].permute(1, 2, 0).float().cpu().numpy()
    return ActMaxResult(target_class=target_class, image=(decoded * 255).round().astype(np.uint8),
                        image_float=decoded, pixel_values=normalise(image.detach()),
                        start_logits=start_logits, end_logits=end_logits, target_trajectory=np.array(trajectory))
