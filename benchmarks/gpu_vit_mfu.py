"""GPU: samples/s and model FLOP utilisation (MFU) of ViT-B/16 training at bf16 with random weights.

FLOPs per step are counted by torch's FlopCounterMode on one real forward+backward (no hand formula);
MFU = achieved FLOP/s / the card's dense bf16 peak (H100/H200 SXM: 989 TFLOP/s; pass --peak-tflops otherwise).

    python benchmarks/gpu_vit_mfu.py [--batch-size 128] [--compile]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the card")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: run this through the device tool on a machine with a GPU")

    from torch.utils.flop_counter import FlopCounterMode
    from transformers import ViTConfig, ViTForImageClassification

    name = torch.cuda.get_device_name()
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    model = ViTForImageClassification(ViTConfig(num_labels=2, attn_implementation="sdpa")).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    step_model = torch.compile(model) if args.compile else model
    pixels = torch.randn(args.batch_size, 3, 224, 224, device="cuda")
    labels = torch.randint(0, 2, (args.batch_size,), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(step_model(pixel_values=pixels).logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(pixel_values=pixels).logits.float(), labels)
        loss.backward()
    optimizer.zero_grad(set_to_none=True)
    flops_per_step = counter.get_total_flops()
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    achieved = flops_per_step / seconds / 1e12
    print(f"gpu ViT-B/16 bf16 train on {name}: {args.batch_size / seconds:.0f} samples/s, "
          f"{flops_per_step / args.batch_size / 1e9:.1f} GFLOP/sample (fwd+bwd), {achieved:.0f} TFLOP/s achieved"
          + (f", MFU {achieved / peak:.3f} of {peak:.0f} TFLOP/s peak" if peak else ", MFU: pass --peak-tflops"))


if __name__ == "__main__":
    main()
