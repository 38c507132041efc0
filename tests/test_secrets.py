"""A Hub token never reaches a file, by any way in: the flag, a --config YAML, `cv --set`, or HF_TOKEN.

Every command that writes files runs once with canary tokens on a tiny model and the real sample, then every byte
under the test's folder (outputs and the decode cache) is searched for them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hfxray.cli import main

FLAG = "hf_CANARYflag0123456789abcdefghijklmnop"
YAML = "hf_CANARYyaml0123456789abcdefghijklmnop"
SET = "hf_CANARYset00123456789abcdefghijklmnop"
ENV = "hf_CANARYenv00123456789abcdefghijklmnop"
TINY = ["--num_train_epochs", "1", "--max_train_samples", "16", "--per_device_train_batch_size", "8",
        "--image_size", "32", "--resize_size", "36", "--report_to", "none", "--average_last_epochs", "0"]


def _leaks(folder: Path) -> list[str]:
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path}: {name}" for name, token in (("flag", FLAG), ("yaml", YAML), ("set", SET),
                                                            ("env", ENV)) if token.encode() in data]
    return found


def test_no_command_writes_a_token(prepared_dir, tmp_path, monkeypatch, capsys, one_torch_thread):
    from datasets import config

    from hfxray.workflow import main as train_main

    monkeypatch.setenv("HF_TOKEN", ENV)
    secret_yaml = tmp_path / "secret.yaml"
    secret_yaml.write_text(f"hub_token: {YAML}\n")
    tmp_path = tmp_path / "written"  # everything the commands write, searched byte by byte below
    monkeypatch.setattr(config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    run = tmp_path / "run"
    assert train_main(["--model", "vit", "--preset", "tiny", "--recipe", "scratch", "--data-dir", str(prepared_dir),
                       "--output-dir", str(run), "--config", str(secret_yaml), "--hub_token", FLAG, *TINY]) == 0

    # cv refuses a token or a push by every way in, before the folds plan is written; with HF_TOKEN set it trains.
    cv = ["cv", "--model", "vit", "--preset", "tiny", "--data-dir", str(prepared_dir), "--folds", "2"]
    sets = [f"{key.removeprefix('--')}={value}" for key, value in zip(TINY[::2], TINY[1::2])]
    for refused, given in ((f"hub_token={SET}", "a Hub token"), (f"config={secret_yaml}", "a Hub token"),
                           ("push_to_hub=true", "push_to_hub")):
        capsys.readouterr()
        assert main([*cv, "--out", str(tmp_path / "cv-refused"), *sum((["--set", s] for s in sets), []),
                     "--set", refused]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: variant 'recipe': cv takes no " + given) and "To fix" in err, err
        assert len(err.strip().splitlines()) == 1 and SET not in err
        assert not (tmp_path / "cv-refused" / "folds.json").exists()
    assert main([*cv, "--out", str(tmp_path / "cv"), *sum((["--set", s] for s in sets), [])]) == 0

    image = sorted((prepared_dir / "test" / "virus").iterdir())[0]
    assert main(["evaluate", "--model", str(run), "--data-dir", str(prepared_dir), "--out",
                 str(tmp_path / "evaluation" / "test.json"), "--n-resamples", "20"]) == 0
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert main(["explain", "--model", str(run), "--method", "rollout", "--out", str(tmp_path / "maps"),
                 str(image)]) == 0
    assert main(["predict", str(image), "--model", str(run), "--out", str(tmp_path / "predictions.csv")]) == 0
    printed = capsys.readouterr()

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 30 and (run / "args.yaml").is_file() and (tmp_path / "cv" / "cv_results.json").is_file()
    assert any((tmp_path / "datasets-cache").rglob("*.arrow"))  # the decode cache was written, and is searched
    assert (tmp_path / "predictions.csv").read_text().count("\n") == 2 and any((tmp_path / "maps").rglob("*.png"))
    assert not _leaks(tmp_path), _leaks(tmp_path)
    for token in (FLAG, YAML, SET, ENV):
        assert token not in printed.out + printed.err
    assert os.environ["HF_TOKEN"] == ENV  # the environment is read, never rewritten
