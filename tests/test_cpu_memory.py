"""The CPU allocator setting: on glibc, training steps stop page-faulting their freed activation memory back in."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from hfxray.cpu_memory import keep_freed_memory
    assert keep_freed_memory()
from hfxray.models import create_model
torch.set_num_threads(1)
model = create_model("bit", "small", image_size=96)[0].train()
optimizer = torch.optim.AdamW(model.parameters())
images, labels = torch.randn(16, 3, 96, 96), torch.randint(0, 2, (16,))

def step():
    torch.nn.functional.cross_entropy(model(pixel_values=images).logits, labels).backward()
    optimizer.step()
    optimizer.zero_grad()

for _ in range(2):  # the first steps fault in fresh memory either way
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 4)
"""


def minor_faults(mode: str) -> int:
    return int(subprocess.run([sys.executable, "-c", PROBE, mode], check=True, capture_output=True,
                              text=True).stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning exists only in glibc")
def test_kept_memory_is_not_faulted_in_again_each_step():
    default, kept = minor_faults("default"), minor_faults("keep")
    # Measured per bit.small step at 96 px: about 6,200 minor page faults by default, about 430 with kept memory.
    assert default > 1_000, f"the probe no longer exercises the allocator ({default} faults per step)"
    assert kept * 5 < default, f"{kept} faults per step with kept memory vs {default} by default"
