"""The README's training commands, run as a user without a GPU would: verbatim, with `--preset tiny` and the CPU
accelerate config, on the real sample. Each finishes within 3 minutes and leaves a model card with real metrics."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent


def readme_training_commands() -> list[list[str]]:
    """The `accelerate launch ... scripts/train.py ...` lines of the README's "Main job" block."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Main job", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.splitlines() if line.startswith("accelerate launch")]


def test_the_readme_shows_every_kind_and_recipe():
    commands = readme_training_commands()
    assert len(commands) == 4
    kinds = {command[command.index("--model") + 1] for command in commands}
    assert kinds == {"vit", "bit", "hybrid"}
    assert all("--config_file" in command for command in commands)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(4))
def test_readme_training_command_with_tiny_preset_on_cpu(index, prepared_dir, tmp_path):
    command = readme_training_commands()[index]
    command[command.index("--config_file") + 1] = str(REPO / "configs" / "accelerate" / "cpu.yaml")
    command[command.index("--data-dir") + 1] = str(prepared_dir)
    out = tmp_path / Path(command[command.index("--output-dir") + 1]).name
    command[command.index("--output-dir") + 1] = str(out)
    command = [sys.executable, "-m", "accelerate.commands.launch", *command[2:], "--preset", "tiny",
               "--disable_tqdm", "true"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"{' '.join(command[3:9])}: {elapsed:.0f} s")
    # accelerate 1.15 gives a launched process one thread unless use_cpu is set (then one per physical core)
    threads = int(re.search(r"on cpu \((\d+) threads\)", result.stderr).group(1))
    assert threads == max(1, psutil.cpu_count(logical=False) or 1), result.stderr[-2000:]
    assert "Run finished" in result.stdout and "next:" in result.stdout
    card = (out / "README.md").read_text()
    results = json.loads((out / "test_results.json").read_text())
    assert f"{results['test_accuracy']:.4f}" in card and f"{results['test_ece']:.4f}" in card
    assert not (out / "training_args.bin").exists()
    assert re.search(r"plan: \w+\.tiny", result.stderr)


def test_a_readme_command_with_a_wrong_folder_ends_in_one_line_without_a_traceback(tmp_path):
    command = readme_training_commands()[0]
    assert command[:3] == ["accelerate", "launch", "-q"]
    command[command.index("--config_file") + 1] = str(REPO / "configs" / "accelerate" / "cpu.yaml")
    command[command.index("--data-dir") + 1] = str(tmp_path / "no-such-folder")
    command[command.index("--output-dir") + 1] = str(tmp_path / "run")
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", *command[2:], "--preset", "tiny"],
                            cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no-such-folder" in errors[0] and "To fix:" in errors[0]
