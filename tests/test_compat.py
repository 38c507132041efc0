"""Expiry tests for hfxray/compat.py: each checks that the upstream behaviour a workaround answers still holds.

A failure here is good news: upstream changed, and the workaround named in the assertion can be dropped (and
its row removed from the table in hfxray/compat.py).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch


def test_transformers_is_within_the_tested_releases():
    from hfxray.compat import check_versions

    check_versions()


def test_the_version_guard_names_the_fix(monkeypatch):
    import hfxray.compat as compat
    from hfxray.errors import HfxrayError

    monkeypatch.setattr(compat, "TRANSFORMERS_REQUIREMENT", "transformers>=99")
    with pytest.raises(HfxrayError, match="To fix: pip install 'transformers>=99'"):
        compat.check_versions()


def test_trainer_still_reloads_checkpoints_non_strictly(tmp_path):
    """StrictCheckpointReload: the Trainer's own reload of a saved ViT keeps the current (wrong) weights."""
    from transformers import Trainer, TrainingArguments

    from hfxray.models import create_model

    saved, _, _ = create_model("vit", "tiny")
    saved.save_pretrained(tmp_path / "checkpoint")
    torch.manual_seed(1)
    current, _, _ = create_model("vit", "tiny")
    trainer = Trainer(model=current, args=TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none",
                                                            use_cpu=True))
    trainer._load_from_checkpoint(str(tmp_path / "checkpoint"))
    name = "vit.layers.0.attention.q_proj.weight" if "vit.layers.0.attention.q_proj.weight" in \
        current.state_dict() else next(k for k in current.state_dict() if "layers.0" in k and k.endswith("weight"))
    restored = torch.equal(current.state_dict()[name], saved.state_dict()[name])
    assert not restored, ("transformers now reloads checkpoints correctly: drop StrictCheckpointReload from "
                          "hfxray/compat.py")


def test_trainer_still_restores_the_rng_after_the_first_resumed_batch():
    """XrayTensorDataset draws augmentation from (seed, epoch, index) because of this order."""
    from transformers import Trainer

    source = inspect.getsource(Trainer)
    fetched = source.find("batch_samples, num_items_in_batch = self.get_batch_samples(")
    synced = source.find("self._load_rng_state(resume_from_checkpoint)", fetched)
    assert fetched > 0 and synced > fetched, ("the Trainer no longer restores the RNG after fetching the first "
                                              "batch of a resumed epoch: the (seed, epoch, index) augmentation RNG "
                                              "in hfxray/transforms.py is no longer required")


def test_trainer_still_counts_parameters_at_every_step():
    """CountParametersOnce: the Trainer's estimate calls num_parameters each time."""
    from transformers import Trainer

    assert "num_parameters(" in inspect.getsource(Trainer.floating_point_ops), (
        "Trainer.floating_point_ops no longer counts parameters per call: drop CountParametersOnce")


def test_bit_image_processor_still_defaults_to_bicubic():
    """build_processor sets bilinear so `pipeline` resizes as hfxray's cached tensors are resized."""
    from transformers import BitImageProcessor
    from transformers.image_utils import PILImageResampling

    assert BitImageProcessor().resample == PILImageResampling.BICUBIC, (
        "BitImageProcessor's default resample changed: check hfxray.models.build_processor still differs from it")


def test_torchvision_center_crop_still_rounds_half_to_even():
    """hfxray.transforms.center_crop rounds offsets down, as the image processors do."""
    from torchvision.transforms.v2 import functional as TF

    from hfxray.transforms import center_crop

    image = torch.arange(9 * 9, dtype=torch.uint8).reshape(1, 9, 9)  # (9 - 2) / 2 = 3.5: round half
    ours = center_crop(image, 2)
    assert torch.equal(ours, image[:, 3:5, 3:5])  # floor(3.5) = 3, the processors' choice; half to even: 4
    assert not torch.equal(TF.center_crop(image, [2, 2]), ours), (
        "torchvision's center_crop now rounds like the processors: hfxray.transforms.center_crop can use it")


def test_timm_wrapper_processor_still_saves_nothing(tmp_path):
    """The hybrid's processor is saved as a BitImageProcessor because the timm wrapper's writes no file."""
    from transformers import TimmWrapperImageProcessor

    processor = TimmWrapperImageProcessor(pretrained_cfg={"input_size": [3, 64, 64], "mean": [0.5] * 3,
                                                          "std": [0.5] * 3, "crop_pct": 1.0})
    processor.save_pretrained(tmp_path)
    assert not list(tmp_path.iterdir()), ("TimmWrapperImageProcessor.save_pretrained writes files now: the hybrid "
                                          "could keep its own processor")


def test_a_config_temperature_still_cannot_be_saved(tmp_path):
    """calibration.FOLDED_TEMPERATURE is not `temperature`, which transformers treats as a generation setting."""
    from transformers import ViTConfig

    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    config.temperature = 2.0
    with pytest.raises(Exception):
        config.save_pretrained(tmp_path)


def test_pytorch_grad_cam_still_centres_cells_at_the_middle_of_their_stride():
    """hfxray.explain.upsample places BiT's cells on their top-left pixel; cv2.resize centres them."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    cells = np.array([[[0.0, 1.0, 0.0]]], dtype=np.float32)  # three cells of stride 32
    row = scale_cam_image(cells, target_size=(96, 1))[0, 0]  # (width, height) for cv2
    peak = float(np.flatnonzero(row == row.max()).mean())
    assert peak == pytest.approx(47.5, abs=0.5), ("pytorch-grad-cam no longer centres cell 1 at pixel 47.5 "
                                                  "(32 + 15.5): check whether hfxray.explain.upsample is needed")
