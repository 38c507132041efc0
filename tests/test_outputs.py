"""hfxray.outputs: no command writes through a link planted in its output, into its inputs, or over a user's files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from hfxray.cli import main as cli_main
from hfxray.outputs import OutputError, check_output_file, check_output_folder, check_run_folder

VICTIM_TEXT = "a user's file outside --out\n"


def victim(tmp_path: Path) -> Path:
    path = tmp_path / "elsewhere" / "victim.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(VICTIM_TEXT)
    return path


def plant(link: Path, target: Path, kind: str) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if kind == "symbolic":
        link.symlink_to(target)
    else:
        os.link(target, link)


@pytest.mark.parametrize("kind", ["symbolic", "hard"])
@pytest.mark.parametrize("where", ["top", "nested"])
def test_a_link_anywhere_in_an_output_folder_is_refused(tmp_path, kind, where):
    out = tmp_path / "out"
    name = "config.json" if where == "top" else "checkpoint-4/trainer_state.json"
    plant(out / name, victim(tmp_path), kind)
    with pytest.raises(OutputError, match=f"{kind} link.*To fix"):
        check_output_folder(out)


def test_a_missing_empty_or_plain_output_folder_is_accepted(tmp_path):
    assert check_output_folder(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "plain" / "sub").mkdir(parents=True)
    (tmp_path / "plain" / "sub" / "a.json").write_text("{}")
    check_output_folder(tmp_path / "plain")


def test_an_output_folder_that_is_a_file_or_a_link_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        check_output_folder(tmp_path / "afile")
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with pytest.raises(OutputError, match="symbolic link"):
        check_output_folder(tmp_path / "alias")


@pytest.mark.parametrize("out, relation", [("data", "is"), (".", "holds"), ("data/train/runs", "lies inside")])
def test_an_output_folder_that_is_holds_or_lies_in_an_input_is_refused(tmp_path, out, relation):
    (tmp_path / "data" / "train").mkdir(parents=True)
    with pytest.raises(OutputError, match=f"{relation} the --data_dir"):
        check_output_folder(tmp_path / out, "--output_dir", [("the --data_dir", tmp_path / "data")])
    check_output_folder(tmp_path / "runs", "--output_dir", [("the --data_dir", tmp_path / "data")])


def test_a_training_folder_must_be_new_empty_or_a_run(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("mine")
    with pytest.raises(OutputError, match="not a training run's.*README.md"):
        check_run_folder(tmp_path / "notes")
    (tmp_path / "run" / "checkpoint-2").mkdir(parents=True)
    check_run_folder(tmp_path / "run")
    (tmp_path / "empty").mkdir()
    check_run_folder(tmp_path / "empty")


@pytest.mark.parametrize("kind", ["symbolic", "hard"])
def test_an_output_file_that_is_a_link_or_a_folder_is_refused(tmp_path, kind):
    plant(tmp_path / "eval.json", victim(tmp_path), kind)
    with pytest.raises(OutputError, match=f"{kind} link"):
        check_output_file(tmp_path / "eval.json")
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tmp_path)
    (tmp_path / "old.json").write_text("{}")
    check_output_file(tmp_path / "old.json")  # an earlier plain file is replaced


# Every command that writes files, with a link planted at a name it writes: one line, exit 2, the target unchanged.
def _commands(tmp_path, prepared, model, image):
    out = tmp_path / "out"
    return {
        "train": (["train", "--model", "vit", "--preset", "tiny", "--data-dir", str(prepared), "--output-dir",
                   str(out), "--num_train_epochs", "1"], out / "config.json"),
        "cv": (["cv", "--model", "vit", "--preset", "tiny", "--data-dir", str(prepared), "--folds", "2", "--out",
                str(out), "--set", "num_train_epochs=1"], out / "cv_table.md"),
        "explain": (["explain", "--model", str(model), "--method", "rollout", "--out", str(out), str(image)],
                    out / f"{image.stem}.{model.name}.rollout.png"),
        "evaluate": (["evaluate", "--model", str(model), "--data-dir", str(prepared), "--out",
                      str(out / "eval.json")], out / "eval.json"),
        "evaluate-default": (["evaluate", "--model", str(model), "--data-dir", str(prepared)],
                             model / "test_evaluation.json"),
        "evaluate-diagram": (["evaluate", "--model", str(model), "--data-dir", str(prepared)],
                             model / "test_evaluation_reliability.png"),
    }


@pytest.mark.parametrize("kind", ["symbolic", "hard"])
@pytest.mark.parametrize("command", ["train", "cv", "explain", "evaluate", "evaluate-default", "evaluate-diagram"])
def test_no_command_writes_through_a_link_in_its_output(command, kind, tmp_path, prepared_dir, tiny_models, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_models / "vit", model)
    image = next((prepared_dir / "test" / "virus").iterdir())
    argv, planted = _commands(tmp_path, prepared_dir, model, image)[command]
    target = victim(tmp_path)
    plant(planted, target, kind)
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1 and f"{kind} link" in err, err
    assert target.read_text() == VICTIM_TEXT


def test_report_refuses_a_link_in_its_output(tmp_path, tiny_runs, capsys):
    target = victim(tmp_path)
    plant(tmp_path / "out" / "report.md", target, "symbolic")
    assert cli_main(["report", str(tiny_runs["vit"]), "--out", str(tmp_path / "out")]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert target.read_text() == VICTIM_TEXT


@pytest.mark.parametrize("command", ["train", "cv", "explain"])
def test_an_output_folder_that_is_a_file_is_one_line(command, tmp_path, prepared_dir, tiny_models, capsys):
    image = next((prepared_dir / "test" / "virus").iterdir())
    argv, _ = _commands(tmp_path, prepared_dir, tiny_models / "vit", image)[command]
    (tmp_path / "out").write_text("mine")
    assert cli_main(argv) == 2
    assert "is a file" in capsys.readouterr().err
    assert (tmp_path / "out").read_text() == "mine"


@pytest.mark.parametrize("command", ["train", "cv"])
def test_training_into_the_data_folder_is_refused(command, tmp_path, prepared_dir, capsys):
    data = tmp_path / "data"
    shutil.copytree(prepared_dir, data, copy_function=os.link)
    argv, _ = _commands(tmp_path, data, tiny_path := tmp_path / "unused", tmp_path / "x.png")[command]
    flag = "--output-dir" if command == "train" else "--out"
    argv[argv.index(flag) + 1] = str(data)
    assert cli_main(argv) == 2
    assert "is the --data" in capsys.readouterr().err
    assert not tiny_path.exists() and sorted(p.name for p in data.iterdir()) == sorted(
        p.name for p in prepared_dir.iterdir())


def test_report_and_explain_look_for_links_only_where_they_write(tmp_path, tiny_runs, capsys):
    # a project folder with a virtual environment (symlinks) and prepared data (hard links) in sub-folders
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "lib64").symlink_to(tmp_path / ".venv")
    data = tmp_path / "data"
    data.mkdir()
    os.link(victim(tmp_path), data / "image.jpeg")
    assert cli_main(["report", str(tiny_runs["vit"]), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").is_file()
    with pytest.raises(OutputError, match="is a (symbolic|hard) link"):  # train and cv own their whole tree
        check_output_folder(tmp_path)


def test_evaluate_writes_into_a_new_folder_but_never_into_the_data(tmp_path, prepared_dir, tiny_models, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_models / "vit", model)
    out = tmp_path / "new" / "folder" / "eval.json"
    assert cli_main(["evaluate", "--model", str(model), "--data-dir", str(prepared_dir), "--out", str(out),
                     "--n-resamples", "5"]) == 0
    assert out.is_file() and (out.parent / "eval_reliability.png").is_file()
    inside = prepared_dir / "test" / "eval.json"
    assert cli_main(["evaluate", "--model", str(model), "--data-dir", str(prepared_dir), "--out", str(inside),
                     "--n-resamples", "5"]) == 2
    assert "lies inside the --data-dir" in capsys.readouterr().err and not inside.exists()
    assert cli_main(["evaluate", "--model", "someone/hfxray-vit", "--data-dir", str(prepared_dir)]) == 2
    assert "--out FILE.json to evaluate it as a Hub id" in capsys.readouterr().err  # a Hub id needs --out
