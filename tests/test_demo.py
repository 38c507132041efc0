"""`hfxray demo` end to end on the real sample, and the generated fallback set it uses when the sample is absent."""

from __future__ import annotations

import csv

from hfxray.cli import main
from hfxray.data import prepare
from hfxray.demo import generate_source
from hfxray.families import ADAPTERS


def test_demo_runs_every_stage_offline(sample_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HFXRAY_SAMPLE_DIR", str(sample_dir))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "using the real CoronaHack sample" in printed and "6/6 done" in printed
    assert printed.rstrip().endswith(" ".join(f"--model {out / 'runs' / kind}" for kind in ADAPTERS))
    with (out / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 92 and all(r["label"] in ("normal", "virus") and not r["error"] for r in rows)
    assert (out / "report" / "report.md").is_file() and (out / "report" / "figure1_test_metrics.png").is_file()
    assert {"vit": "rollout", "bit": "gradcam", "hybrid": "gradcam"}.items() <= \
        {kind: family.explanation for kind, family in ADAPTERS.items()}.items()  # every family's own, shown first
    for kind, family in ADAPTERS.items():
        assert list((out / "explain" / kind).glob(f"*.{family.explanation}.png")), kind
        assert (out / "runs" / kind / "test_results.json").is_file() and (out / "runs" / kind / "README.md").is_file()


def test_generated_fallback_set_prepares_with_both_classes(tmp_path):
    source = generate_source(tmp_path / "generated", patients_per_class=10)
    summary = prepare(source, tmp_path / "prepared", echo=lambda *_: None, progress=lambda items, **_: items)
    assert summary.kept_total == 20 and not summary.skipped
    assert all(summary.counts[split]["normal"] and summary.counts[split]["virus"] for split in ("train", "test"))
