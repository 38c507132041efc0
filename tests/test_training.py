"""End-to-end training on the real sample with the tiny preset: three kinds, reload, DDP, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from hfxray.arguments import ConfigError, parse_args
from hfxray.workflow import main

REPO = Path(__file__).resolve().parent.parent
FAST = ["--num_train_epochs", "1", "--max_train_samples", "48", "--per_device_train_batch_size", "8",
        "--logging_steps", "2"]


def _run_args(prepared_dir, out, model="vit", extra=()):
    return ["--model", model, "--preset", "tiny", "--data-dir", str(prepared_dir), "--output-dir", str(out), *extra]


@pytest.mark.parametrize("kind", ["vit", "bit", "hybrid"])
def test_each_kind_trains_saves_and_reloads(kind, prepared_dir, tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    out = tmp_path / kind
    assert main(_run_args(prepared_dir, out, kind, ["--recipe", "scratch", *FAST])) == 0
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "args.yaml", "README.md",
                 "calibration.json", "train_results.json", "test_results.json", "test_reliability.png"):
        assert (out / name).is_file(), name
    assert not (out / "training_args.bin").exists()  # a pickle; args.yaml is the record
    assert list(out.glob("checkpoint-*")), "no checkpoint written"
    assert list((out / "runs").rglob("events.out.tfevents.*")), "no TensorBoard events"
    resolved = yaml.safe_load((out / "args.yaml").read_text())
    assert resolved["model"] == kind and resolved["recipe"] == "scratch" and resolved["optim"] == "adamw_torch"
    test_results = json.loads((out / "test_results.json").read_text())
    assert 0.0 <= test_results["test_accuracy"] <= 1.0 and test_results["test_n"] == 92
    model = AutoModelForImageClassification.from_pretrained(out)
    processor = AutoImageProcessor.from_pretrained(out)
    assert model.config.id2label == {0: "normal", 1: "virus"}
    assert processor.crop_size == {"height": 128, "width": 128}  # the scratch recipe's crop


def test_yaml_config_stands_in_for_flags_and_flags_win(prepared_dir, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": "bit", "preset": "tiny", "learning_rate": 0.5,
                                      "data_dir": str(prepared_dir), "output_dir": str(tmp_path / "o")}))
    model_args, data_args, recipe_args, _, training_args = parse_args(["--config", str(config),
                                                                       "--learning-rate", "0.25"])
    assert model_args.model == "bit" and recipe_args.schedule == "exponential_epoch"  # bit's seed recipe
    assert training_args.optim == "adamw_torch"
    assert training_args.learning_rate == 0.25 and data_args.data_dir == str(prepared_dir)
    config.write_text("lr: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key.*lr"):
        parse_args(["--config", str(config)])


def test_unprepared_data_dir_says_which_command_makes_one(tmp_path, capsys):
    assert main(_run_args(tmp_path, tmp_path / "o")) == 2
    assert "hfxray data prepare" in capsys.readouterr().err


@pytest.mark.parametrize("kind, checkpoint", [("vit", "google/vit-base-patch16-224-in21k"),
                                              ("bit", "timm/resnetv2_50x1_bit.goog_in21k"),
                                              ("bit_in1k", "google/bit-50"),
                                              ("hybrid", "timm/vit_base_r50_s16_224.orig_in21k")])
def test_every_pretrained_preset_offline_ends_in_one_error_line(kind, checkpoint, prepared_dir, tmp_path, capsys):
    out = tmp_path / "full"
    assert main(["--model", kind, "--preset", "full", "--data-dir", str(prepared_dir), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and checkpoint in lines[0] and "To fix" in lines[0], err[-2000:]
    assert "Traceback" not in err and "decoding" not in err and not (out / "args.yaml").exists()


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")


@pytest.mark.slow
def test_two_process_ddp_with_accelerate_launch(prepared_dir, tmp_path):
    """configs/accelerate/cpu-2proc.yaml starts two connected gloo ranks on a CPU-only machine."""
    out = tmp_path / "ddp"
    import socket

    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "configs" / "accelerate" / "cpu-2proc.yaml"), "--main_process_port", str(port),
               str(REPO / "scripts" / "train.py"), *_run_args(prepared_dir, out, "bit", FAST)]
    env = {k: v for k, v in _env().items() if k != "ACCELERATE_USE_CPU"}  # the config alone must suffice
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    train_results = json.loads((out / "train_results.json").read_text())
    assert train_results["world_size"] == 2
    assert train_results["global_step"] == 3  # 48 images / (8 per device x 2 processes)


KILLING_TRAIN = textwrap.dedent("""
    import os, signal, sys
    from transformers import TrainerCallback
    import hfxray.training as training
    from hfxray.workflow import main

    make_trainer = training._recipe_trainer_class

    class KillAtStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == int(os.environ["KILL_AT_STEP"]):
                os.kill(os.getpid(), signal.SIGKILL)

    def killing_trainer_class():
        base = make_trainer()

        class KillingTrainer(base):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.add_callback(KillAtStep())

        return KillingTrainer

    training._recipe_trainer_class = killing_trainer_class
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_resume_after_sigkill_mid_epoch_matches_an_uninterrupted_run(prepared_dir, tmp_path):
    extra = ["--recipe", "scratch", "--num_train_epochs", "2", "--max_train_samples", "48",
             "--per_device_train_batch_size", "8", "--report_to", "none", "--save_strategy", "steps",
             "--eval_strategy", "steps", "--save_steps", "3", "--eval_steps", "3", "--save_total_limit", "10",
             "--average_last_epochs", "0", "--load_best_model_at_end", "true", "--seed", "3"]
    script = tmp_path / "killing_train.py"
    script.write_text(KILLING_TRAIN)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run = lambda args, **env: subprocess.run([sys.executable, str(script), *args], env=dict(_env(), **env),
                                             capture_output=True, text=True, timeout=600)
    result = run(_run_args(prepared_dir, straight, "vit", extra), KILL_AT_STEP="-1")
    assert result.returncode == 0, result.stderr[-3000:]
    killed = run(_run_args(prepared_dir, interrupted, "vit", extra), KILL_AT_STEP="4")  # epoch 1 has 6 steps
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (interrupted / "checkpoint-3").is_dir() and not (interrupted / "checkpoint-6").exists()
    resumed = run(_run_args(prepared_dir, interrupted, "vit", [*extra, "--resume"]), KILL_AT_STEP="-1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((interrupted / "train_results.json").read_text())["global_step"] == 12
    expected = load_file(straight / "checkpoint-12" / "model.safetensors")
    got = load_file(interrupted / "checkpoint-12" / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert (expected[name] - got[name]).abs().max().item() < 1e-6, name


def test_push_to_hub_without_network_fails_before_training(prepared_dir, tmp_path, capsys):
    out = tmp_path / "push"
    code = main(_run_args(prepared_dir, out, "vit", ["--push_to_hub", "--hub_model_id", "someone/xray"]))
    assert code == 2
    assert "push" in capsys.readouterr().err and not (out / "args.yaml").exists()


def test_weight_averaging_needs_epoch_checkpoints(prepared_dir, tmp_path):
    base = _run_args(prepared_dir, tmp_path / "o", "bit", ["--recipe", "scratch"])
    with pytest.raises(ConfigError, match="average_last_epochs"):
        parse_args([*base, "--save_strategy", "steps", "--eval_strategy", "steps"])
    with pytest.raises(ConfigError, match="save_total_limit"):
        parse_args([*base, "--save_total_limit", "2"])


def test_final_model_is_the_mean_of_the_last_epoch_checkpoints(prepared_dir, tmp_path, capsys):
    from transformers import AutoModelForImageClassification

    out = tmp_path / "averaged"
    assert main(_run_args(prepared_dir, out, "bit", ["--recipe", "scratch", "--num_train_epochs", "3",
                                                     "--max_train_samples", "32", "--report_to", "none",
                                                     "--disable_tqdm", "true"])) == 0
    # --disable_tqdm silences every bar, transformers' per-checkpoint "Writing model shards" too.
    assert "Writing model shards" not in capsys.readouterr().err
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))[-3:]
    states = [AutoModelForImageClassification.from_pretrained(c).state_dict() for c in checkpoints]
    final = AutoModelForImageClassification.from_pretrained(out)
    folded = json.loads((out / "config.json").read_text()).get("folded_temperature", 1.0)  # the head holds 1/T
    for name, value in final.state_dict().items():
        expected = sum(state[name] for state in states) / 3
        if name.startswith("classifier"):
            expected = expected / folded
        assert (value - expected).abs().max().item() < 1e-5, name


def test_mixed_precision_and_gradient_accumulation_pass_through(prepared_dir, tmp_path, capsys):
    out = tmp_path / "amp"
    common = ["--recipe", "scratch", "--num_train_epochs", "1", "--max_train_samples", "64",
              "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2", "--bf16", "true",
              "--report_to", "none"]
    assert main(_run_args(prepared_dir, out, "vit", common)) == 2  # bf16 needs a GPU unless --use_cpu
    assert "use_cpu" in capsys.readouterr().err
    assert main(_run_args(prepared_dir, out, "vit", [*common, "--use_cpu", "true"])) == 0
    assert json.loads((out / "train_results.json").read_text())["global_step"] == 4  # 64 / (8 x 2)
    resolved = yaml.safe_load((out / "args.yaml").read_text())
    assert resolved["bf16"] is True and resolved["gradient_accumulation_steps"] == 2


@pytest.mark.parametrize("kind", ["vit", "bit", "hybrid"])
def test_flop_estimate_counts_parameters_once_and_agrees_with_the_trainer(kind, tmp_path):
    import torch
    from transformers import Trainer, TrainingArguments

    from hfxray.models import create_model
    from hfxray.training import RecipeArguments, _recipe_trainer_class

    model, _, _ = create_model(kind, "tiny")
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = _recipe_trainer_class()(model=model, args=args, recipe=RecipeArguments())
    inputs = {"pixel_values": torch.zeros(4, 3, 64, 64), "labels": torch.zeros(4, dtype=torch.long)}
    expected = Trainer.floating_point_ops(trainer, inputs)
    assert expected > 0
    assert trainer.floating_point_ops(inputs) == expected
    model.num_parameters = lambda **_: 0  # counted once: a second call must not count again
    assert trainer.floating_point_ops(inputs) == expected


def test_the_hub_token_is_never_stored_in_the_run_folder(prepared_dir, tmp_path):
    token = "hf_SECRETtokenNEVERstored0123456789"
    out = tmp_path / "token"
    assert main(_run_args(prepared_dir, out, "bit", [*FAST, "--hub_token", token, "--save_strategy", "epoch"])) == 0
    files = [path for path in out.rglob("*") if path.is_file()]
    assert any(path.name == "training_args.bin" for path in files)  # in the checkpoints: without the token
    leaks = [path for path in files if token.encode() in path.read_bytes()]
    assert not leaks, leaks


def test_overwrite_output_dir_never_reuses_an_earlier_runs_checkpoints(prepared_dir, tmp_path):
    out = tmp_path / "again"
    longer = ["--recipe", "scratch", "--num_train_epochs", "4", "--max_train_samples", "32", "--report_to", "none",
              "--save_total_limit", "10"]
    assert main(_run_args(prepared_dir, out, "bit", longer)) == 0
    earlier = sorted(int(p.name.split("-")[-1]) for p in out.glob("checkpoint-*"))
    shorter = [*longer[:2], "--num_train_epochs", "3", *longer[4:], "--overwrite_output_dir"]
    assert main(_run_args(prepared_dir, out, "bit", shorter)) == 0
    steps = json.loads((out / "train_results.json").read_text())["global_step"]
    remaining = sorted(int(p.name.split("-")[-1]) for p in out.glob("checkpoint-*"))
    assert max(earlier) > steps and max(remaining) == steps  # the longer run's last checkpoints are gone


def test_processes_that_are_not_connected_are_refused(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from hfxray.training import check_processes_connected

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="not connected.*To fix: .*configs/accelerate/"):
        check_processes_connected(SimpleNamespace(world_size=1))
    check_processes_connected(SimpleNamespace(world_size=2))


@pytest.mark.parametrize("kind", ["vit", "bit", "hybrid"])
def test_a_checkpoint_that_cannot_be_resumed_is_one_line_before_any_data_work(kind, tmp_path):
    from hfxray.arguments import ConfigError
    from hfxray.models import create_model
    from hfxray.training import check_resumable

    model = create_model(kind, "tiny")[0]
    checkpoint = tmp_path / "checkpoint-4"
    model.save_pretrained(checkpoint)  # as the Trainer saves it
    (checkpoint / "trainer_state.json").write_text('{"global_step": 4}')
    check_resumable(checkpoint, create_model(kind, "tiny")[0])  # its own run resumes
    other = "bit" if kind != "bit" else "vit"
    with pytest.raises(ConfigError, match="weights of another model.*To fix"):
        check_resumable(checkpoint, create_model(other, "tiny")[0])
    with pytest.raises(ConfigError, match="weights of another model"):
        check_resumable(checkpoint, create_model(kind, "small")[0])
    weights = (checkpoint / "model.safetensors").read_bytes()
    (checkpoint / "model.safetensors").write_bytes(weights[:100])
    with pytest.raises(ConfigError, match="model.safetensors cannot be read.*To fix"):
        check_resumable(checkpoint, model)
    (checkpoint / "model.safetensors").write_bytes(weights)
    (checkpoint / "trainer_state.json").write_text('{"global_st')
    with pytest.raises(ConfigError, match="trainer_state.json cannot be read.*To fix"):
        check_resumable(checkpoint, model)


def test_overwrite_output_dir_removes_the_earlier_runs_results_too(tmp_path):
    import contextlib
    from types import SimpleNamespace

    from hfxray.runs import RunFolder
    from hfxray.training import _start_over

    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "runs").mkdir()  # TensorBoard: one sub-folder per run, kept
    for name in RunFolder.RESULTS:
        (tmp_path / name).write_text("the earlier run's")
    args = SimpleNamespace(output_dir=str(tmp_path), process_index=0,
                           main_process_first=lambda desc: contextlib.nullcontext())
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        _start_over(args, resume=False, overwrite=False)
    assert (tmp_path / "test_results.json").exists()
    (tmp_path / "test_evaluation.json").write_text("{}")  # hfxray evaluate's default output
    for diagram in ("test_reliability.png", "test_evaluation_reliability.png"):
        (tmp_path / diagram).write_bytes(b"png")
    assert _start_over(args, resume=False, overwrite=True) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    # a run stopped before it wrote args.yaml leaves runs/ alone: still a run folder, to train into again
    from hfxray.outputs import check_run_folder

    check_run_folder(tmp_path)
    # results without checkpoints go too when --overwrite_output_dir is asked for
    (tmp_path / "test_results.json").write_text("old")
    _start_over(args, resume=False, overwrite=True)
    assert not (tmp_path / "test_results.json").exists()
