"""Inference: `pipeline("image-classification")` with batching vs a raw batched forward of the same model on the
same images, both through the model's own processor (the pipeline preprocesses one image at a time and
batches the forward; the raw side does both a batch at a time). Run for the small presets and for the study's full-size architectures with random weights (no
download), whose per-image compute is what users wait for. Goal: ratio >= 0.9.

    python benchmarks/inference.py [--repeats 3] [--images 32]
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from PIL import Image

from _common import interleaved_medians, prepared_sample


def full_size_models():
    """ViT-B/16, BiT-M-R50x1 and R50+ViT-B/16 built from their configurations: the study's sizes, no Hub access."""
    from transformers import (BitConfig, BitForImageClassification, TimmWrapperConfig,
                              TimmWrapperForImageClassification, ViTConfig, ViTForImageClassification)

    from hfxray.models import ID2LABEL, LABEL2ID

    labels = dict(num_labels=2, id2label=dict(ID2LABEL), label2id=dict(LABEL2ID))
    yield "vit", ViTForImageClassification(ViTConfig(**labels))
    yield "bit", BitForImageClassification(BitConfig(layer_type="preactivation", depths=[3, 4, 6, 3],
                                                     hidden_sizes=[256, 512, 1024, 2048], embedding_size=64,
                                                     **labels))
    yield "hybrid", TimmWrapperForImageClassification(TimmWrapperConfig(architecture="vit_base_r50_s16_224",
                                                                        **labels))


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=32)
    args = parser.parse_args()

    from transformers import pipeline

    from hfxray.data import read_manifest
    from hfxray.models import build_processor, create_model

    prepared = prepared_sample()
    files = [prepared / r["file"] for r in read_manifest(prepared) if r["status"] == "kept"][: args.images]
    images = [Image.open(f).convert("RGB") for f in files]
    models = [(f"{kind}.small", *create_model(kind, "small")[:2]) for kind in ("vit", "bit", "hybrid")]
    models += [(f"{kind}.full (random weights)", model, build_processor(224)) for kind, model in full_size_models()]
    for name, model, processor in models:
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
        print(f"inference {name}: pipeline {rate('pipeline'):.1f} img/s vs raw batched forward "
              f"{rate('raw'):.1f} img/s, ratio {times['raw'] / times['pipeline']:.3f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
