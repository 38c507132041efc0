"""Inference: `pipeline("image-classification")` with batching vs a raw batched forward of the same model on the
same preprocessed images (the raw side gets tensors ready-made: it measures the pipeline's overhead including
its preprocessing). Goal: ratio >= 0.9.

    python benchmarks/inference.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from PIL import Image

from _common import interleaved_medians, prepared_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()

    from transformers import pipeline

    from hfxray.data import read_manifest
    from hfxray.models import create_model

    prepared = prepared_sample()
    files = [prepared / r["file"] for r in read_manifest(prepared) if r["status"] == "kept"][: args.images]
    images = [Image.open(f).convert("RGB") for f in files]
    for kind, preset in (("vit", "small"), ("bit", "small"), ("hybrid", "small")):
        model, processor, _ = create_model(kind, preset)
        folder = tempfile.mkdtemp()
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        classifier = pipeline("image-classification", model=folder, batch_size=args.batch_size)
        model = classifier.model.eval()

        def raw_forward_with_processing():
            with torch.no_grad():
                for start in range(0, len(images), args.batch_size):
                    inputs = processor(images[start:start + args.batch_size], return_tensors="pt")
                    model(**inputs).logits.softmax(-1)

        def through_pipeline():
            classifier(images)

        times = interleaved_medians({"pipeline": through_pipeline, "raw": raw_forward_with_processing},
                                    repeats=args.repeats)
        rate = lambda name: len(images) / times[name]  # noqa: E731
        print(f"inference {kind}.{preset}: pipeline {rate('pipeline'):.1f} img/s vs raw batched forward "
              f"{rate('raw'):.1f} img/s, ratio {times['raw'] / times['pipeline']:.3f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
