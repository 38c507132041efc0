"""GPU: samples/s and model FLOP utilisation (MFU) of ViT-B/16 training at bf16 with random weights.

FLOPs per step are counted by torch's FlopCounterMode on one real forward+backward (no hand formula);
MFU = achieved FLOP/s / the card's dense bf16 peak (H100/H200 SXM: 989 TFLOP/s; pass --peak-tflops otherwise).
Without a CUDA device it runs the same code as a smoke check on the CPU with a 2-layer ViT, and divides by the
bf16 matmul throughput it measures on this CPU instead of a datasheet peak.

    python benchmarks/gpu_vit_mfu.py [--batch-size 128] [--compile]
"""

from __future__ import annotations

import argparse
import time

import torch

PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0}


def measured_matmul_tflops(device: str, size: int = 2048, repeats: int = 5) -> float:
    """bf16 matmul throughput of this device, the CPU's stand-in for a datasheet peak."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 128 on a GPU, 8 on the CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (>= 1); default: 30 on a GPU, 3 on the CPU")
    parser.add_argument("--warmup", type=int, default=None, help="default: 10 on a GPU, 1 on the CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the card")
    args = parser.parse_args()
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")

    from torch.utils.flop_counter import FlopCounterMode
    from transformers import ViTConfig, ViTForImageClassification

    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    batch_size = args.batch_size or (128 if on_gpu else 8)
    steps = args.steps if args.steps is not None else (30 if on_gpu else 3)
    warmup = args.warmup if args.warmup is not None else (10 if on_gpu else 1)
    if on_gpu:
        name = torch.cuda.get_device_name()
        peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        config = ViTConfig(num_labels=2, attn_implementation="sdpa")  # ViT-B/16
        label = "ViT-B/16"
    else:
        name = "CPU (smoke check, no CUDA device)"
        peak = args.peak_tflops or measured_matmul_tflops(device)
        config = ViTConfig(num_labels=2, num_hidden_layers=2, attn_implementation="sdpa")  # ViT-B width, 2 layers
        label = "ViT-B/16 (2 layers)"
    model = ViTForImageClassification(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=on_gpu)
    step_model = torch.compile(model) if args.compile else model
    pixels = torch.randn(batch_size, 3, 224, 224, device=device)
    labels = torch.randint(0, 2, (batch_size,), device=device)

    def synchronize():
        if on_gpu:
            torch.cuda.synchronize()

    def step():
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(step_model(pixel_values=pixels).logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(pixel_values=pixels).logits.float(), labels)
        loss.backward()
    optimizer.zero_grad(set_to_none=True)
    flops_per_step = counter.get_total_flops()
    for _ in range(warmup):
        step()
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    seconds = (time.perf_counter() - start) / steps
    achieved = flops_per_step / seconds / 1e12
    reference = "peak" if on_gpu else "measured bf16 matmul"
    print(f"{'gpu' if on_gpu else 'cpu smoke'} {label} bf16 train on {name}: {batch_size / seconds:.1f} samples/s, "
          f"{flops_per_step / batch_size / 1e9:.1f} GFLOP/sample (fwd+bwd), {achieved:.3g} TFLOP/s achieved"
          + (f", MFU {achieved / peak:.3f} of {peak:.3g} TFLOP/s {reference}" if peak else
             ", MFU: pass --peak-tflops"))


if __name__ == "__main__":
    main()
