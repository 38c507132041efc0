"""GPU: a full-size training smoke, `hfxray train` as the README launches it, on the real sample.

Each family's full-size architecture (ViT-B/16 as google/vit-base-patch16-224-in21k, BiT-M-R50x1) is saved
with random weights into a temporary folder and passed as `--checkpoint`, so the run needs no Hub download; the
command is then the README's GPU command (`accelerate launch ... configs/accelerate/one-gpu.yaml scripts/train.py
--model M --recipe seed ... --bf16 true`) with `--max_steps` added. It prints, per model, the wall time of the
whole command (start-up, training, calibration, evaluation, card), the Trainer's training samples/s and that the
saved run answers through `pipeline("image-classification")`. Random weights learn nothing in a few steps: the
test metrics are not a result, and the script does not print them.

    python benchmarks/gpu_train_smoke.py [--models vit bit] [--max-steps 60] [--batch-size 64]

Without a CUDA device it runs the same path with the CPU launch config, 2 steps of 4 images (a check that the
script works, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _common import REPO, prepared_sample


def save_random_full_size(model: str, folder: Path) -> None:
    """The family's full-size architecture and image processor, random weights, as a local checkpoint."""
    from transformers import (BitConfig, BitForImageClassification, BitImageProcessor, ViTConfig,
                              ViTForImageClassification, ViTImageProcessor)

    labels = dict(id2label={0: "normal", 1: "virus"}, label2id={"normal": 0, "virus": 1})
    if model == "vit":
        # ViTConfig's defaults are ViT-B/16 at 224 px, the architecture of google/vit-base-patch16-224-in21k.
        network = ViTForImageClassification(ViTConfig(**labels))
        processor = ViTImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3)
    elif model == "bit":
        # BiT-M-R50x1: pre-activation ResNetV2-50, width 1, weight-standardised convolutions, 'SAME' padding.
        network = BitForImageClassification(BitConfig(layer_type="preactivation", global_padding="SAME",
                                                      embedding_dynamic_padding=True, **labels))
        processor = BitImageProcessor()
    else:
        raise SystemExit(f"--models: vit or bit, not {model!r}")
    network.save_pretrained(folder)
    processor.save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    parser.add_argument("--models", nargs="+", default=["vit", "bit"])
    parser.add_argument("--max-steps", type=int, default=None, help="default: 60 on a GPU, 2 on the CPU")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's on a GPU, 4 on the CPU")
    args = parser.parse_args()

    import torch

    on_gpu = torch.cuda.is_available()
    steps = args.max_steps or (60 if on_gpu else 2)
    data = prepared_sample()
    where = torch.cuda.get_device_name() if on_gpu else "CPU (a check of the script, no CUDA device)"
    print(f"full-size training smoke on {where}, torch {torch.__version__}, {steps} steps")
    for model in args.models:
        work = Path(tempfile.mkdtemp(prefix=f"hfxray-gpu-smoke-{model}-"))
        checkpoint, out = work / "checkpoint", work / "run"
        save_random_full_size(model, checkpoint)
        launch = [sys.executable, "-m", "accelerate.commands.launch", "-q", "--config_file",
                  str(REPO / "configs/accelerate" / ("one-gpu.yaml" if on_gpu else "cpu.yaml"))]
        command = [*launch, str(REPO / "scripts/train.py"), "--model", model, "--recipe", "seed",
                   "--checkpoint", str(checkpoint), "--data-dir", str(data), "--output-dir", str(out),
                   "--max_steps", str(steps), "--report_to", "none"]
        if on_gpu:
            command += ["--bf16", "true"]
        else:
            command += ["--max_train_samples", "8", "--per_device_train_batch_size", "4"]
        if args.batch_size:
            command += ["--per_device_train_batch_size", str(args.batch_size)]
        start = time.perf_counter()
        finished = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
        seconds = time.perf_counter() - start
        if finished.returncode:
            print(f"{model}: FAILED after {seconds:.0f} s (exit {finished.returncode})\n{finished.stdout[-3000:]}"
                  f"\n{finished.stderr[-6000:]}")
            continue
        train = json.loads((out / "train_results.json").read_text())
        run_args = yaml.safe_load((out / "args.yaml").read_text())  # the resolved arguments the run wrote
        batch, size = run_args["per_device_train_batch_size"], run_args["image_size"]
        from PIL import Image
        from transformers import pipeline

        classify = pipeline("image-classification", model=str(out), device=0 if on_gpu else -1)
        image = next((data / "test").rglob("*.jp*g"))
        with Image.open(image) as opened:
            answer = classify(opened.convert("RGB"))
        print(f"{model}: {seconds:.0f} s for the whole command; training {train.get('train_runtime', 0):.1f} s, "
              f"{train.get('train_samples_per_second', 0):.1f} samples/s at batch {batch}, {size} px, "
              f"{steps} steps; pipeline answers {[a['label'] for a in answer]}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
