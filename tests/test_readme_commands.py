"""The README's commands, run as a user would: the CPU quick start verbatim (with the sample where the README says
the Kaggle download goes), and the GPU training commands with `--preset tiny` and the CPU accelerate config, on the
real sample. Each leaves a model card with real metrics."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def readme_block(heading: str) -> list[str]:
    """The command lines of the first bash block under a README heading."""
    text = (REPO / "README.md").read_text()
    block = text.split(f"\n## {heading}\n", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def readme_training_commands() -> list[list[str]]:
    """The `accelerate launch ... scripts/train.py ...` lines of the README's "Main job (GPU)" block."""
    return [shlex.split(line) for line in readme_block("Main job (GPU)") if line.startswith("accelerate launch")]


def test_the_readme_starts_with_install_and_a_cpu_quick_start():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 350
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert headings[:3] == ["Install", "Quick start (CPU)", "Main job (GPU)"]
    for section in ("Data", "Training", "Data-safety guarantees", "Limitations", "Documentation index", "Tests"):
        assert section in headings
    # the install and test commands are the ones CI runs
    ci = (REPO / ".ci" / "run").read_text()
    assert readme_block("Tests") == ["python -m pytest -q"] and "python -m pytest -q" in ci
    install = readme_block("Install")[0]
    assert "python -m venv .venv" in install and 'pip install -e ".[dev]"' in install
    assert 'pip install -e ".[dev]"' in ci
    quick = readme_block("Quick start (CPU)")
    assert [line.split()[1] for line in quick] == ["data", "train", "evaluate", "explain", "serve"]
    assert text.index("## Quick start (CPU)") < text.index("accelerate launch")
    assert "accelerate launch" in readme_training_commands()[0] or readme_training_commands()[0][:2] == \
        ["accelerate", "launch"]
    assert readme_training_commands()[0][readme_training_commands()[0].index("--model") + 1] == "vit"
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (REPO / link).is_file(), link


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_the_quick_start_runs_as_written(sample_dir, tmp_path):
    """Each quick-start line through bash, verbatim, in a fresh home whose ~/data/coronahack is the sample; the last
    one (serve) must answer on its port (a free one is appended: the default may be taken)."""
    import urllib.request

    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    (home / "data" / "coronahack").symlink_to(sample_dir)
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, HOME=str(home), HF_HUB_OFFLINE="1")
    *lines, serve = readme_block("Quick start (CPU)")
    outputs = {}
    for line in lines:
        result = subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, (line, result.stderr[-3000:])
        assert "Traceback" not in result.stderr
        outputs[line.split()[1]] = result
    assert "Run finished" in outputs["train"].stdout
    training_log = outputs["train"].stderr
    assert "validation at step" in training_log and "{'loss'" not in training_log  # lines, not dicts
    assert not any("Loading weights" in result.stderr for result in outputs.values())
    results = json.loads((work / "runs" / "quick-bit" / "test_results.json").read_text())
    low, _ = results["test_ci95"]["auroc"]
    assert low > 0.5, "the quick start's model is at chance"
    assert "AUROC" in outputs["evaluate"].stdout and not outputs["evaluate"].stdout.lstrip().startswith("{")
    assert list((work / "maps").glob("*.png"))
    port = _free_port()
    server = subprocess.Popen(["bash", "-c", f"exec {serve} --port {port}"], cwd=work, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
                    assert page.status == 200
                    break
            except OSError:
                assert server.poll() is None, server.stdout.read()[-3000:]
                assert time.monotonic() < deadline, "serve did not answer within 300 s"
                time.sleep(2)
    finally:
        server.terminate()
        server.wait(timeout=60)


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
    if "cpu.yaml" in command[command.index("--config_file") + 1]:  # the README's CPU line sets the thread count
        assert "--num_cpu_threads_per_process" in command[:command.index("scripts/train.py")]
    else:  # a GPU line run on the CPU: the CPU config with the thread count its README sentence asks for
        command[command.index("--config_file") + 1] = str(REPO / "configs" / "accelerate" / "cpu.yaml")
        command[command.index("scripts/train.py"):command.index("scripts/train.py")] = [
            "--num_cpu_threads_per_process", "2"]
    threads_asked = int(command[command.index("--num_cpu_threads_per_process") + 1])
    command[command.index("--data-dir") + 1] = str(prepared_dir)
    out = tmp_path / Path(command[command.index("--output-dir") + 1]).name
    command[command.index("--output-dir") + 1] = str(out)
    # A few epochs' worth of steps: the command's whole path (training, calibration, evaluation, card) runs; the
    # quick start's test is the one that asserts a model above chance.
    command = [sys.executable, "-m", "accelerate.commands.launch", *command[2:], "--preset", "tiny",
               "--disable_tqdm", "true", "--max_steps", "12"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if "--recipe" in command and command[command.index("--recipe") + 1] == "paper":
        # a fine-tuning recipe on random weights would learn nothing: refused before any work, in one line
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode != 0 and len(errors) == 1 and "--recipe paper" in errors[0], result.stderr[-2000:]
        assert "To fix:" in errors[0] and not out.exists()
        return
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"{' '.join(command[3:9])}: {elapsed:.0f} s")
    threads = int(re.search(r"on cpu \((\d+) threads\)", result.stderr).group(1))
    # torch 2.14 takes OMP_NUM_THREADS (which accelerate sets from the flag) up to the CPUs this process may use
    assert threads == min(threads_asked, len(os.sched_getaffinity(0))), result.stderr[-2000:]
    assert DEFAULTS_NOTE not in result.stderr and "accelerate config" not in result.stderr
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


# --- accelerate's launcher says nothing before the script ----------------------------------------------------------
# accelerate 1.16 (`_validate_launch_command`) logs "The following values were not passed to `accelerate launch` and
# had defaults used instead: ... run `accelerate config`" when a launch leaves a value to its defaults. With a config
# file, the one value a file cannot hold is the thread count: a `use_cpu: true` config with OMP_NUM_THREADS unset
# gets one thread per physical core per process, and the note, whenever that is more than one. The count is given
# on the command line (`--num_cpu_threads_per_process`, which accelerate exports as OMP_NUM_THREADS) or by an
# exported OMP_NUM_THREADS; a `num_cpu_threads_per_process:` key in the file is refused as unknown.
DEFAULTS_NOTE = "were not passed to `accelerate launch`"
LAUNCH_CONFIGS = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))


def _readme_launch_prefix() -> list[str]:
    """`accelerate launch` and its options up to `--config_file`, as the README's first launch line writes them."""
    command = readme_training_commands()[0]
    return command[:command.index("--config_file") + 1]


def _validated_launch(launcher_args: list[str], monkeypatch, caplog) -> tuple[object, str]:
    """(accelerate's validated launch arguments, what it logged) for `accelerate launch LAUNCHER_ARGS
    scripts/train.py --help` on a machine with 8 physical cores; nothing is started."""
    import psutil

    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 16 if logical else 8)
    args = launch_command_parser().parse_args([*launcher_args, "scripts/train.py", "--help"])
    caplog.clear()
    with caplog.at_level("WARNING", logger="accelerate"):
        validated, _, _ = _validate_launch_command(args)
    return validated, caplog.text


@pytest.mark.parametrize("config", LAUNCH_CONFIGS, ids=lambda path: path.stem)
def test_every_launch_config_launches_without_accelerates_defaults_note(config, monkeypatch, caplog, tmp_path):
    """The README's prefix with each config: a GPU config (`use_cpu: false`) needs nothing more; a CPU config needs
    the thread count, given either way accelerate honours, and then the process gets exactly that count."""
    import yaml

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    prefix = [*_readme_launch_prefix()[2:], str(config)]  # the options after `accelerate launch`
    validated, note = _validated_launch(prefix, monkeypatch, caplog)
    if not yaml.safe_load(config.read_text())["use_cpu"]:
        assert DEFAULTS_NOTE not in note and validated.num_cpu_threads_per_process == 1, note
        return
    assert DEFAULTS_NOTE in note and "`accelerate config`" in note  # accelerate's rule, which the fix rests on
    from accelerate.commands.config.config_args import load_config_from_file

    in_the_file = tmp_path / config.name  # why the count is not in the file: accelerate refuses the key
    in_the_file.write_text(config.read_text() + "num_cpu_threads_per_process: 3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_config_from_file(str(in_the_file))
    validated, note = _validated_launch([*prefix, "--num_cpu_threads_per_process", "3"], monkeypatch, caplog)
    assert DEFAULTS_NOTE not in note and validated.num_cpu_threads_per_process == 3, note
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    validated, note = _validated_launch(prefix, monkeypatch, caplog)
    assert DEFAULTS_NOTE not in note and validated.num_cpu_threads_per_process == 5, note


@pytest.mark.parametrize("config", ["cpu.yaml", "cpu-2proc.yaml"])
def test_a_cpu_launch_with_its_thread_count_prints_nothing_before_the_script(config, tmp_path):
    """The real launcher, as the README starts it, on a script that only reports its thread count: nothing on
    stderr, and every process gets the count given."""
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nprint('threads', os.environ.get('OMP_NUM_THREADS'))\n")
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    command = [sys.executable, "-m", "accelerate.commands.launch", *_readme_launch_prefix()[2:],
               str(REPO / "configs" / "accelerate" / config), "--num_cpu_threads_per_process", "2",
               "--main_process_port", str(_free_port()), str(probe)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert DEFAULTS_NOTE not in result.stderr and "accelerate config" not in result.stderr, result.stderr
    processes = 2 if config == "cpu-2proc.yaml" else 1
    # two processes may write their lines into each other: count the words, not the lines
    assert result.stdout.count("threads 2") == result.stdout.count("threads") == processes, result.stdout
