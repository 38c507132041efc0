"""scripts/evidence_figures.py: its subcommands write what docs/evidence.md's committed results files hold, and
the merged-pool facts are counts read from a prepared folder's manifest, without file names."""

import json
import re
from pathlib import Path

from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
EVIDENCE = ROOT / "docs" / "results" / "evidence"


def _script():
    return load_script("evidence_figures")


ef = _script()


def test_a_rerun_writes_the_committed_file(tmp_path):
    """Fixed seeds: the same subcommand writes the same bytes. The cheap one is rerun whole here; test_intervals
    and test_selection recompute rows of the two long simulations; shortcut-null (about 10 s) runs on 3 draws."""
    out = tmp_path / "proportion_edges.json"
    assert ef.main(["proportion-edges", "--out", str(out)]) == 0
    assert out.read_text() == (EVIDENCE / "proportion_edges.json").read_text(), \
        "rerun: python scripts/evidence_figures.py proportion-edges"
    assert ef.main(["shortcut-null", "--draws", "3", "--out", str(tmp_path / "null.json")]) == 0
    few, committed = (json.loads(p.read_text()) for p in (tmp_path / "null.json", EVIDENCE / "shortcut_null.json"))
    assert few.keys() == committed.keys() and few["draws"] == 3 and committed["draws"] == 200
    assert 0 <= few["patients_p_below_0.05"] <= 1 and 0 < few["images_mean_p"] < 1


def test_merged_pool_counts_the_manifest_without_file_names(prepared_dir, tmp_path):
    """On the prepared sample (one source): the counts are the manifest's, the Cohen-derived files form 15 patient
    groups in one split each, and no file name reaches the results file."""
    from hfxray.data.manifest import read_manifest

    out = tmp_path / "pool.json"
    assert ef.main(["merged-pool", "--data-dir", str(prepared_dir), "--out", str(out)]) == 0
    pool = json.loads(out.read_text())
    kept = [r for r in read_manifest(prepared_dir) if r["status"] == "kept"]
    assert pool["images"] == len(kept) and pool["split_totals"]["train"] == sum(r["split"] == "train" for r in kept)
    assert pool["cohen"] == {"files_listed": 31, "patient_groups_kept": 15, "groups_in_two_splits": 0}
    assert pool["groups_in_two_splits"] == 0 and pool["duplicates"]["merged"] == 0
    assert pool["duplicates"]["pairs"]["across"] == 0 and pool["duplicates"]["pairs"]["coronahack"] > 0
    assert not re.search(r"\.(jpe?g|png)|person\d|IM-", out.read_text(), re.I)
    # the sample splits as in the merged pool whose figures docs/evidence.md quotes
    committed = json.loads((ROOT / "docs" / "results" / "merged-pool" / "pool.json").read_text())
    assert pool["splits"]["coronahack"] == committed["splits"]["coronahack"]
