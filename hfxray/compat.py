"""Workarounds for behaviour of the libraries hfxray builds on, in one place.

Each entry names the upstream behaviour, the version it was checked with, where the workaround lives and the
expiry test in `tests/test_compat.py` that fails once upstream changes, so the workaround can be dropped.

| workaround | upstream behaviour (checked with) | where |
|---|---|---|
| strict checkpoint reload | transformers saves checkpoints with 4.x parameter names but reloads them for `--resume` and `load_best_model_at_end` with a non-strict `load_state_dict`, silently keeping the current weights (huggingface/transformers#43701, PR #44366; 5.24) | `StrictCheckpointReload` below |
| parameters counted once | `Trainer.floating_point_ops` walks every parameter at every step (0.7 ms of a 90 ms bit.small step; 5.24) | `CountParametersOnce` below |
| augmentation RNG from (seed, epoch, index) | on resume mid-epoch the Trainer restores the global RNG only after fetching the first batch (5.24), so a dataset drawing from the global RNG diverges from an uninterrupted run | `hfxray.transforms.XrayTensorDataset._augment` |
| processor resample bilinear | `BitImageProcessor` resamples bicubic by default (5.24); hfxray's cached tensors are resized bilinearly, so the saved processor is set to bilinear for `pipeline` to see the same pixels | `hfxray.models.build_processor` |
| center crop rounds offsets down | torchvision's `center_crop` rounds half to even (0.29), one pixel off the image processors' crop on half the images | `hfxray.transforms.center_crop` |
| hybrid processor saved as BitImageProcessor | `TimmWrapperImageProcessor.save_pretrained` writes no file (5.24) | `hfxray.models.build_processor` |
| `config.folded_temperature` | transformers refuses to save a config with `temperature` (a generation parameter; 5.24) | `hfxray.calibration` |
| Grad-CAM upsampled by hfxray | pytorch-grad-cam resizes with `cv2.resize`, centring cell i at `stride * i + (stride - 1) / 2`, half a cell off for BiT's padded strided convolutions (1.5.7) | `hfxray.explain.upsample` |
"""

from __future__ import annotations

from .errors import HfxrayError

# The transformers releases the workarounds above were checked with; pyproject.toml caps the dependency here.
TRANSFORMERS_REQUIREMENT = "transformers>=5.0,<5.25"


class VersionError(HfxrayError):
    """An installed library is outside the versions hfxray was tested with."""


def check_versions() -> None:
    """Refuse to run with a transformers release the workarounds were not checked against."""
    from transformers.utils.versions import require_version

    try:
        require_version(TRANSFORMERS_REQUIREMENT)
    except ImportError as err:  # require_version reports a mismatch as an ImportError
        raise VersionError(f"{err}. To fix: pip install '{TRANSFORMERS_REQUIREMENT}' (the library workarounds in "
                           "hfxray/compat.py were checked against these releases).") from None


class StrictCheckpointReload:
    """Trainer mixin: reload checkpoints through `from_pretrained`, which maps the 4.x names, strictly."""

    def _load_weights_from(self, folder: str, model=None) -> None:
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        reloaded = type(target).from_pretrained(folder, config=target.config)
        target.load_state_dict(reloaded.state_dict(), strict=True)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        self._load_weights_from(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        self._load_weights_from(self.state.best_model_checkpoint)


class CountParametersOnce:
    """Trainer mixin: the Trainer's own FLOP estimate (6 x input elements x parameters), parameters counted once."""

    _parameter_count: int | None = None

    def floating_point_ops(self, inputs: dict) -> int:
        main_input = getattr(self.model, "main_input_name", "pixel_values")
        if main_input not in inputs or not hasattr(self.model, "num_parameters"):
            return 0  # as the Trainer does for models that are not PreTrainedModels
        if self._parameter_count is None:
            self._parameter_count = self.model.num_parameters(exclude_embeddings=True)
        return 6 * inputs[main_input].numel() * self._parameter_count
