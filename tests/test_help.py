"""Help that shows what to type, and flags a user types from habit: one example per command, one default per
flag (the recipe's), no abbreviations, familiar transformers-example flags pointed to hfxray's, one-line errors."""

from __future__ import annotations

import re

import pytest

from hfxray.arguments import ConfigError, parse_args
from hfxray.cli import COMMANDS, EXAMPLES, main
from hfxray.families import model_names
from hfxray.workflow import main as train_main


def _help(capsys, argv) -> str:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    return capsys.readouterr().out


def _entry(text: str, flag: str) -> str:
    """The help entry (flag line and its wrapped text, whitespace collapsed) of `flag`."""
    entries = [" ".join(part.split()) for part in re.split(r"\n  (?=--)", text)]
    return next(entry for entry in entries if entry.startswith(flag + " ") or entry.startswith(flag + ","))


def _error_line(capsys, code: int) -> str:
    assert code == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "To fix:" in lines[0], captured.err
    assert "usage:" not in captured.err and "Traceback" not in captured.err
    return lines[0]


def test_top_level_help_gives_one_example_per_command_and_no_implementation_talk(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert set(EXAMPLES) == set(COMMANDS)
    for name, example in EXAMPLES.items():
        assert example.startswith(f"hfxray {name} ") and example in text
    assert "dispatcher" not in text and "lazy" not in text and "import" not in text


@pytest.mark.parametrize("argv", [[name] for name in COMMANDS if name != "train"]
                         + [["data", "prepare"], ["data", "cache"]])
def test_each_command_help_begins_with_an_example(capsys, argv):
    text = _help(capsys, [*argv, "--help"])
    assert text.startswith(f"example:\n  hfxray {' '.join(argv)}"), text[:200]


@pytest.mark.parametrize("prog", ["hfxray train", "scripts/train.py"])
def test_train_help_begins_with_an_example_and_shows_one_default_per_flag(capsys, prog):
    with pytest.raises(SystemExit):
        parse_args(["--help"], prog=prog)
    text = capsys.readouterr().out
    assert text.startswith(f"example:\n  {prog} --model vit ")
    flat = " ".join(text.split())
    assert not re.search(r"\(default: [^)]*\) \(default:", flat), "a flag shows two defaults"
    assert "(default: 5e-05)" not in flat  # transformers' own default, which no recipe uses
    entry = _entry(text, "--no_calibrate")
    assert "Turn --calibrate off" in entry and "(default" not in entry
    assert "Fold the temperature" in _entry(text, "--calibrate") and "Fold" not in entry


def test_train_help_shows_the_recipe_resolved_defaults(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--model", "bit", "--preset", "tiny", "--recipe", "scratch", "--help"])
    text = capsys.readouterr().out
    assert "--model bit --recipe scratch --preset tiny" in " ".join(text.split())
    for flag, value in (("learning_rate", "0.001"), ("num_train_epochs", "30.0"), ("optim", "adamw_torch"),
                        ("image_size", "128"), ("label_smoothing_factor", "0.1")):
        entry = _entry(text, f"--{flag}")
        assert entry.endswith(f"(default: {value})"), (flag, entry)


@pytest.mark.parametrize("flag, points_to", [("--model_name_or_path", "--checkpoint"), ("--train_dir", "--data-dir"),
                                             ("--dataset_name", "--data-dir")])
def test_familiar_transformers_flags_point_to_ours_in_one_line(capsys, fake_prepared, tmp_path, flag, points_to):
    code = train_main(["--data-dir", str(fake_prepared), "--output-dir", str(tmp_path / "run"), flag, "x"])
    line = _error_line(capsys, code)
    assert flag in line and f"use {points_to}" in line


def test_abbreviations_are_refused_with_the_full_name(capsys, fake_prepared, tmp_path):
    with pytest.raises(ConfigError, match="unknown flag --learning_rat. To fix: use --learning_rate "):
        parse_args(["--data-dir", str(fake_prepared), "--output-dir", str(tmp_path), "--learning_rat", "0.1"])
    with pytest.raises(ConfigError, match="unknown flag --mod\\b"):
        parse_args(["--data-dir", str(fake_prepared), "--output-dir", str(tmp_path), "--mod", "bit"])
    code = main(["cv", "--model", "bit", "--data-dir", str(fake_prepared), "--out", str(tmp_path / "cv"),
                 "--fold", "3"])
    assert "--fold" in _error_line(capsys, code)
    code = main(["data", "prepare", "--sourc", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "--sourc" in _error_line(capsys, code)


def test_an_abbreviation_in_cv_set_is_refused_before_any_fold(capsys, prepared_dir, tmp_path):
    code = main(["cv", "--model", "bit", "--preset", "tiny", "--recipe", "scratch", "--data-dir", str(prepared_dir),
                 "--out", str(tmp_path / "cv"), "--set", "learning_rat=0.1"])
    assert "use --learning_rate" in _error_line(capsys, code)
    assert not list((tmp_path / "cv").rglob("fold_results.json"))


def test_an_unknown_model_names_the_registry_models(capsys, fake_prepared, tmp_path):
    code = train_main(["--model", "vitt", "--data-dir", str(fake_prepared), "--output-dir", str(tmp_path / "run")])
    line = _error_line(capsys, code)
    assert "--model vitt" in line and "recipe" not in line
    assert all(name in line for name in model_names()) and "vit" in model_names()


def test_evaluate_with_a_missing_run_folder_says_so(capsys, fake_prepared, tmp_path):
    (tmp_path / "runs").mkdir()
    for model in ("runs/nope", str(tmp_path / "runs" / "nope")):
        line = _error_line(capsys, main(["evaluate", "--model", model, "--data-dir", str(fake_prepared)]))
        assert f"--model {model}: no such folder" in line
