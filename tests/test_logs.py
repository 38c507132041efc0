"""`hfxray -q`: warnings, errors and a command's own results only, the libraries' progress bars included, in every
command that loads a model or trains; lifting it restores the messages and bars (and a user's own switch)."""

from __future__ import annotations

import logging

import pytest

from hfxray.cli import main as cli
from hfxray.logs import ROOT, configure


@pytest.fixture(autouse=True)
def _not_quiet_afterwards():
    yield
    configure("INFO", quiet=False)


def test_quiet_is_a_floor_that_later_configure_calls_keep_until_it_is_lifted():
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as transformers_logging

    configure("WARNING", quiet=True)
    configure("INFO")  # what the training entry point does once its arguments are parsed
    assert logging.getLogger(ROOT).level == logging.WARNING
    assert hub_utils.are_progress_bars_disabled() and not transformers_logging.is_progress_bar_enabled()
    configure("INFO", quiet=False)
    assert logging.getLogger(ROOT).level == logging.INFO
    assert not hub_utils.are_progress_bars_disabled() and transformers_logging.is_progress_bar_enabled()


def test_lifting_quiet_keeps_a_users_own_progress_bar_switch(monkeypatch):
    from huggingface_hub import utils as hub_utils

    configure("WARNING", quiet=True)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    configure("INFO", quiet=False)
    assert hub_utils.are_progress_bars_disabled()
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS")
    hub_utils.enable_progress_bars()


def test_quiet_predict_prints_only_its_results(tiny_runs, prepared_dir, tmp_path, capsys):
    images = str(prepared_dir / "test" / "virus")
    assert cli(["-q", "predict", "--model", str(tiny_runs["bit"]), images]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # no "Loading weights" or "predicting" bars, no info lines
    assert captured.out.startswith("file,label,probability")
    assert cli(["predict", "--model", str(tiny_runs["bit"]), "--out", str(tmp_path / "p.csv"), images]) == 0
    assert "predicted" in capsys.readouterr().err  # the info line is back once -q is not given


def test_quiet_evaluate_prints_only_its_table_or_json(tiny_runs, prepared_dir, tmp_path, capsys):
    assert cli(["-q", "evaluate", "--model", str(tiny_runs["vit"]), "--data-dir", str(prepared_dir),
                "--out", str(tmp_path / "eval"), "--n-resamples", "20"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "95% CI" in captured.out
    assert cli(["-q", "evaluate", "--model", str(tiny_runs["vit"]), "--data-dir", str(prepared_dir),
                "--out", str(tmp_path / "eval"), "--n-resamples", "20", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.lstrip().startswith("{")


def test_quiet_train_prints_only_the_final_summary(prepared_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(["-q", "train", "--model", "bit", "--preset", "tiny", "--recipe", "scratch", "--data-dir",
                str(prepared_dir), "--output-dir", str(out), "--num_train_epochs", "3", "--max_train_samples", "16",
                "--logging_steps", "1", "--report_to", "none"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "", captured.err[-2000:]  # no step dicts, bars, plan or cache lines
    assert str(out) in captured.out  # the summary: where the run is and what to do next
    assert (out / "trainer_state.json").is_file() and "loss" in (out / "trainer_state.json").read_text()


def test_quiet_explain_and_prepare_draw_no_bars(tiny_runs, prepared_dir, sample_dir, tmp_path, capsys):
    image = next((prepared_dir / "test" / "virus").iterdir())
    assert cli(["-q", "explain", "--model", str(tiny_runs["bit"]), "--method", "gradcam", "--out",
                str(tmp_path / "maps"), str(image)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "explained 1 of 1" in captured.out
    assert cli(["-q", "data", "prepare", "--source", str(sample_dir), "--out", str(tmp_path / "prepared")]) == 0
    assert capsys.readouterr().err == ""  # the per-image bars (checking, hashing, writing) are off


def test_library_bars_are_off_only_inside_the_block():
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as transformers_logging

    from hfxray.logs import library_progress_bars_off

    with library_progress_bars_off():
        assert hub_utils.are_progress_bars_disabled() and not transformers_logging.is_progress_bar_enabled()
    assert not hub_utils.are_progress_bars_disabled() and transformers_logging.is_progress_bar_enabled()
    with library_progress_bars_off(active=False):
        assert transformers_logging.is_progress_bar_enabled()
    configure("WARNING", quiet=True)
    with library_progress_bars_off():
        pass
    assert not transformers_logging.is_progress_bar_enabled()  # leaving the block does not lift -q


def test_weight_loading_bars_are_hidden_and_download_bars_kept():
    from transformers.utils import logging as transformers_logging

    from hfxray.logs import hide_weight_loading_bars

    hide_weight_loading_bars()
    hide_weight_loading_bars()  # idempotent
    for desc in ("Loading weights", "Writing model shards"):
        assert transformers_logging.tqdm(range(3), desc=desc).disable
    assert not transformers_logging.tqdm(range(3), desc="Downloading", disable=False).disable


def test_training_logs_read_as_lines_not_dicts():
    from hfxray.training import format_log

    step = format_log({"loss": 0.6198, "grad_norm": 1.191, "learning_rate": 9.011e-05, "train_accuracy": 0.727,
                       "epoch": 7.143}, 100, 420)
    assert step == "step 100/420 (epoch 7.14): loss 0.620, grad norm 1.191, learning rate 9.01e-05, accuracy 0.727"
    validation = format_log({"eval_loss": 0.6071, "eval_accuracy": 0.7975, "eval_auroc": 0.8481, "eval_n": 79,
                             "eval_runtime": 0.23, "epoch": 7.0}, 98, 420)
    assert validation == "validation at step 98/420 (epoch 7.00): loss 0.607, accuracy 0.797, AUROC 0.848 (79 images)"
    assert "{" not in step + validation and "'" not in step + validation


def test_progress_without_a_terminal_prints_lines(capsys, monkeypatch):
    import io

    from hfxray import logs

    logs.configure("INFO", quiet=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal: no bar
    clock = iter(range(0, 1000, 4))  # each image takes 4 s
    monkeypatch.setattr("time.monotonic", lambda: next(clock))
    assert list(logs.progress(range(7), total=7, desc="gradcam bit", unit="image")) == list(range(7))
    lines = [line for line in __import__("sys").stderr.getvalue().splitlines() if line.startswith("gradcam bit")]
    assert lines[-1] == "gradcam bit: 7/7 images (100 %), 28 s" and 2 <= len(lines) <= 4
    assert "\r" not in __import__("sys").stderr.getvalue()
