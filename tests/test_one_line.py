"""The last hostile inputs that ended in a traceback end in one line: file names that are not UTF-8, an unusable
cache location, architecture overrides that cannot build or are too large, model-folder JSON too large or too deep.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hfxray.cli import main
from hfxray.serve import find_examples

REPO_ROOT = Path(__file__).resolve().parent.parent
BAD_NAME = b"scan\xff\xfe-=1.jpeg"  # not UTF-8: Python hands it over with surrogate escapes


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "To fix" in lines[0] and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def odd_images(sample_dir, tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(find_examples(sample_dir, count=1)[0], os.path.join(os.fsencode(folder), BAD_NAME))
    return folder


def test_undecodable_names_are_printed_and_written_as_text(odd_images, tiny_models, tmp_path):
    """Strict UTF-8 standard streams (a UTF-8 locale, not the C locale's surrogateescape) and an output folder whose
    own name is not UTF-8: every name printed or written is escaped, every file written is UTF-8."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8:strict"}
    out = os.path.join(os.fsencode(tmp_path), b"out\xff")
    predict = [sys.executable, "-m", "hfxray.cli", "predict", os.fsencode(odd_images), "--model",
               os.fsencode(tiny_models / "vit"), "--out", os.path.join(out, b"predictions.csv")]
    explain = [sys.executable, "-m", "hfxray.cli", "explain", "--model", os.fsencode(tiny_models / "bit"),
               "--method", "gradcam", "--out", os.path.join(out, b"maps"), os.fsencode(odd_images)]
    os.mkdir(out)
    for command in (predict, explain):
        done = subprocess.run(command, env=env, capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        assert b"Traceback" not in done.stderr
        printed = (done.stdout + done.stderr).decode("utf-8")  # strictly UTF-8
        assert "out\\xff" in printed  # the output folder's name, escaped
    written = [Path(os.fsdecode(root)) / os.fsdecode(name) for root, _, names in os.walk(out) for name in names]
    assert {p.suffix for p in written} == {".csv", ".json", ".png", ".npz"}  # figures, maps, summaries
    for path in written:
        if path.suffix in (".csv", ".json"):
            text = path.read_bytes().decode("utf-8")  # strictly UTF-8
            assert "scan\\xff\\xfe-=1.jpeg" in text.replace("\\\\", "\\"), (path, text)
    assert any(p.name == "scan\\xff\\xfe-=1.bit.gradcam.png" for p in written)


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_unusable_cache_location_is_one_line_for_every_command_that_uses_it(where, prepared_dir, tiny_models,
                                                                               tmp_path, monkeypatch, capsys):
    from datasets import config

    blocker = tmp_path / "blocker"
    blocker.write_text("")
    location = blocker if where == "a file" else blocker / "cache"
    monkeypatch.setattr(config, "HF_DATASETS_CACHE", location)  # what HF_DATASETS_CACHE sets
    evaluate = ["evaluate", "--model", str(tiny_models / "vit"), "--data-dir", str(prepared_dir), "--out",
                str(tmp_path / "evaluation.json"), "--n-resamples", "10"]
    train = ["train", "--model", "vit", "--preset", "tiny", "--data-dir", str(prepared_dir), "--output-dir",
             str(tmp_path / "run"), "--max_steps", "1", "--report_to", "none"]
    cv = ["cv", "--model", "vit", "--preset", "tiny", "--data-dir", str(prepared_dir), "--out", str(tmp_path / "cv"),
          "--folds", "2", "--set", "max_steps=1"]
    for argv in (evaluate, train, cv, [*train[:-4], "--output-dir", str(tmp_path / "run2"), "--cache_dir",
                                       str(location), *train[-4:]]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        line = _one_line(capsys.readouterr().err)
        assert line.startswith(f"error: {location}/hfxray-decoded: unusable as the decode cache ("), line


@pytest.mark.parametrize("kind, overrides, expected", [
    ("bit", "num_groups=0", "cannot build bit.tiny"),
    ("bit", "hidden_sizes=[]", "cannot build bit.tiny"),
    ("vit", "num_attention_heads=0", "cannot build vit.tiny"),
    ("hybrid", "num_heads=0", "cannot build hybrid.tiny"),
    ("bit", "depths=[100000,1,1,1]", "bit.tiny with 100003 blocks: above hfxray's limit of 256"),
    ("vit", "hidden_size=65536,intermediate_size=65536", " M parameters (estimated without allocating), above "
                                                         "hfxray's limit of 1,000 M"),
])
def test_overrides_that_cannot_build_or_are_too_large_are_one_line(kind, overrides, expected, fake_prepared,
                                                                   tmp_path, capsys):
    import resource
    import time

    start, peak = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert main(["train", "--model", kind, "--preset", "tiny", "--data-dir", str(fake_prepared), "--output-dir",
                 str(tmp_path / "run"), "--config_overrides", overrides]) == 2
    assert expected in _one_line(capsys.readouterr().err)
    # Refused from shapes alone: no 200 GB of weights allocated, no minutes of building blocks.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 2**20  # KiB: under 1 GiB more
    assert time.perf_counter() - start < 60


@pytest.mark.parametrize("name, content, expected", [
    ("config.json", "[" * 200_000 + "]" * 200_000, "nested deeper than Python's recursion limit"),
    ("config.json", '{"a": ' * 70 + "1" + "}" * 70, "nested more than 64 levels deep"),
    ("preprocessor_config.json", '{"a": ' * 70 + "1" + "}" * 70, "nested more than 64 levels deep"),
    ("config.json", None, "MiB, above hfxray's limit of 4 MiB"),
])
def test_model_json_too_deep_or_too_large_is_one_line_for_every_loader(name, content, expected, tiny_models,
                                                                       prepared_dir, tmp_path, capsys):
    from hfxray.serve import ServeError, load_served_model

    model = tmp_path / "model"
    shutil.copytree(tiny_models / "vit", model)
    if content is None:  # sparse: 5 MiB of zeros, never parsed
        with (model / name).open("wb") as handle:
            handle.truncate(5 * 2**20)
    else:
        (model / name).write_text(content)
    image = str(sorted((prepared_dir / "test" / "virus").iterdir())[0])
    for argv in (["predict", image, "--model", str(model)],
                 ["explain", "--model", str(model), "--method", "rollout", "--out", str(tmp_path / "maps"), image],
                 ["evaluate", "--model", str(model), "--data-dir", str(prepared_dir), "--out",
                  str(tmp_path / "e.json")]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        line = _one_line(capsys.readouterr().err)
        assert f"{model / name}: " in line and expected in line, line
    with pytest.raises(ServeError, match=expected):  # serve's loader, without starting a server
        load_served_model(model)


def test_an_interrupt_before_a_command_finishes_is_one_line(monkeypatch, capsys):
    """Ctrl+C (or serve's SIGTERM / SIGHUP, raised as KeyboardInterrupt) while a command starts up."""
    import hfxray.cli

    def interrupted(argv):
        raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(hfxray.cli, "_dispatch", interrupted)
    assert hfxray.cli.main(["serve", "--model", "x"]) == 130
    assert capsys.readouterr().err == "interrupted (SIGTERM)\n"
