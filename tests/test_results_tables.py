"""scripts/results_tables.py: every figure table in README.md and docs/*.md is what its results file renders to,
and the figures the prose quotes are the ones those files hold."""

import csv
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "external-cohen"
EVIDENCE = ROOT / "docs" / "results" / "evidence"
POOL = ROOT / "docs" / "results" / "merged-pool"
PHASH = ROOT / "docs" / "results" / "duplicates" / "phash_distances.json"
SAMPLES = ROOT / "docs" / "results" / "samples"
CV_EXAMPLE = Path(__file__).resolve().parent / "data" / "cv-example"


def _script():
    return load_script("results_tables")


rt = _script()


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


# --- (a) the docs agree with their files -------------------------------------------------------------------------

def test_every_block_in_the_docs_matches_its_results_file():
    out = io.StringIO()
    status = rt.check(rt.default_docs(ROOT), ROOT, out=out)
    assert status == 0, "tables differ from their results files (python scripts/results_tables.py --write):\n" + \
        out.getvalue()
    views = [(b.path.rsplit("/", 1)[1], b.view) for b in rt.blocks(ROOT / "docs" / "data.md")]
    # the external validation's tables are blocks (a test that finds no block could not fail)
    assert views == [("validation_results.json", "metrics"), ("test_results.json", "metrics"),
                     ("findings.json", "findings"), ("test_results.json", "shortcut")]
    assert [(b.path.rsplit("/", 1)[1], b.view) for b in rt.blocks(ROOT / "docs" / "evidence.md")] == [
        ("ece_coverage.json", "ece_coverage"), ("selection_power.json", "selection_power"),
        ("pool.json", "pool_splits"), ("pool.json", "pool_duplicates"), ("pool.json", "pool_geometry"),
        ("source_features_normal.json", "source_features"), ("source_features_virus.json", "source_features")]


# --- (b) a changed figure is caught, named, and --write restores it ------------------------------------------------

def test_a_changed_digit_fails_the_check_naming_its_block(tmp_path, capsys):
    original = (ROOT / "docs" / "data.md").read_text()
    block = next(b for b in rt.blocks(ROOT / "docs" / "data.md") if b.path.endswith("validation_results.json"))
    assert "| AUROC | 0.994 | 0.982–1.000 |" in block.body
    copy = tmp_path / "data.md"
    copy.write_text(original.replace("| AUROC | 0.994 | 0.982–1.000 |", "| AUROC | 0.995 | 0.982–1.000 |"))
    assert rt.main([str(copy), "--root", str(ROOT)]) == 1
    out = capsys.readouterr().out
    assert f"{copy}:{block.line}: results block (docs/results/external-cohen/validation_results.json view=metrics) " \
           "differs from its file" in out
    assert "-| AUROC | 0.995 | 0.982–1.000 |" in out and "+| AUROC | 0.994 | 0.982–1.000 |" in out
    assert out.count("differs from its file") == 1  # the other blocks still agree
    assert rt.main(["--write", str(copy), "--root", str(ROOT)]) == 0
    assert copy.read_text() == original


def test_a_block_without_the_command_that_wrote_its_file_fails(tmp_path, capsys):
    body = rt.render(RESULTS / "test_results.json", "shortcut", "here")
    doc = tmp_path / "doc.md"
    doc.write_text("Some text that names no command.\n\n<!-- results: docs/results/external-cohen/test_results.json "
                   "view=shortcut -->\n" + "\n".join(body) + "\n<!-- /results -->\n")
    assert rt.main([str(doc), "--root", str(ROOT)]) == 1
    assert f"{doc}:3: no command writing docs/results/external-cohen/test_results.json" in capsys.readouterr().out
    doc.write_text(doc.read_text().replace("names no command.", "comes from\n`hfxray evaluate ... --out "
                                           "docs/results/external-cohen/test_results.json`:"))
    assert rt.main([str(doc), "--root", str(ROOT)]) == 0


# --- (c) a broken block is one clear line ------------------------------------------------------------------------

@pytest.mark.parametrize("opening, message", [
    ("<!-- results: docs/results/nowhere/test_results.json view=metrics -->",
     "results file docs/results/nowhere/test_results.json does not exist. To fix:"),
    ("<!-- results: docs/results/external-cohen/test_results.json view=median -->",
     "unknown view 'median'. To fix: use one of metrics, by_source, shortcut, findings, cv_summary, cv_selection, "
     "ece_coverage, selection_power, pool_splits, pool_geometry, pool_duplicates, source_features, refit_seeds, "
     "control_lifts, explain_cascading, explain_localisation, explain_data_randomisation."),
    ("<!-- results: docs/results/external-cohen/findings.json view=metrics -->",
     "findings.json has no `ci95`. To fix:"),
    ("<!-- results: docs/results/external-cohen/test_results.json view=cv_selection -->",
     "test_results.json has no `selection`. To fix:"),
    ("<!-- results: docs/results/external-cohen/test_results.json -->", "malformed results comment"),
])
def test_a_missing_file_or_unknown_view_is_one_clear_line(tmp_path, capsys, opening, message):
    doc = tmp_path / "doc.md"
    doc.write_text("Written by `--out docs/results/external-cohen/test_results.json` and its folder docs/results/"
                   f"nowhere.\n\n{opening}\n| x |\n<!-- /results -->\n")
    assert rt.main([str(doc), "--root", str(ROOT)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith(f"error: {doc}:3: "), captured.err
    assert message in lines[0]


def test_an_unclosed_block_is_one_clear_line(tmp_path, capsys):
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- results: docs/results/external-cohen/test_results.json view=metrics -->\n| x |\n")
    assert rt.main([str(doc), "--root", str(ROOT)]) == 2
    assert capsys.readouterr().err == f"error: {doc}:1: results block is not closed. To fix: end it with " \
                                      "`<!-- /results -->` on a line of its own.\n"


# --- (d) the renderers on the committed files give the figures the docs quote ------------------------------------

def test_renderers_on_the_committed_external_validation_files():
    validation = rt.render(RESULTS / "validation_results.json", "metrics", "here")
    assert "| AUROC | 0.994 | 0.982–1.000 |" in validation and "| images (virus) | 91 (46) |  |" in validation
    assert "| specificity | 0.474 | 0.247–0.712 |" in rt.render(RESULTS / "test_results.json", "metrics", "here")
    findings = rt.render(RESULTS / "findings.json", "findings", "here")
    assert "| test | cohen | COVID-19 | 52 / 63 (45 patients) | 0.825 (0.70–0.91) |" in findings
    assert "| validation | coronahack | normal | 1 / 45 (39 patients) | 0.022 (0.00–0.12) |" in findings
    assert "| test | cohen | Varicella | 2 / 2 (1 patient) | 1.000 (0.34–1.00) |" in findings
    assert len(findings) == 2 + len(_load("findings.json")["rows"])
    shortcut = rt.render(RESULTS / "test_results.json", "shortcut", "here")
    assert shortcut[2:] == ["| normal | cohen vs coronahack | 19 / 45 | 0.91 | 0.81–0.97 | 0.0005 |",
                            "| virus | cohen vs coronahack | 79 / 46 | 0.51 | 0.50–0.63 | 0.87 |"]


def test_by_source_and_shortcut_read_a_refits_prefixed_report(tmp_path):
    """The CV refit's test_results.json carries the Trainer's `test_` prefix and one row per source of a merged
    test split; built here from the two committed reports (one source each)."""
    from hfxray.evaluation import prefixed

    test, validation = _load("test_results.json"), _load("validation_results.json")
    merged = dict(test, by_source={**test["by_source"], **validation["by_source"]})
    path = tmp_path / "test_results.json"
    path.write_text(json.dumps(prefixed(merged, "test")))
    rows = rt.render(path, "by_source", "here")
    assert rows[2:] == [
        "| cohen | 98 (79) | 0.765 (0.660–0.845) | 0.655 (0.534–0.794) | 0.685 (0.522–0.839) "
        "| 0.835 (0.731–0.905) | 0.474 (0.247–0.712) |",
        "| coronahack | 91 (46) | 0.934 (0.863–0.970) | 0.935 (0.883–0.978) | 0.994 (0.982–1.000) "
        "| 0.891 (0.769–0.953) | 0.978 (0.882–0.996) |"]
    assert rt.render(path, "shortcut", "here") == rt.render(RESULTS / "test_results.json", "shortcut", "here")
    assert rt.render(path, "metrics", "here") == rt.render(RESULTS / "test_results.json", "metrics", "here")


def test_cv_views_are_what_hfxray_cv_writes():
    """tests/data/cv-example: a summary and the cv_table.md that `hfxray cv` wrote from it before its table code
    was split for the docs; the table is byte-identical, and the two views together are that table."""
    from hfxray.cv import table_markdown

    written = (CV_EXAMPLE / "cv_table.md").read_text()
    summary = json.loads((CV_EXAMPLE / "cv_results.json").read_text())
    assert table_markdown(summary) == written
    views = [rt.render(CV_EXAMPLE / "cv_results.json", view, "here") for view in ("cv_summary", "cv_selection")]
    assert "\n".join(views[0]) + "\n\n" + "\n".join(views[1]) + "\n" == written
    assert "| c160_zoom100 | +0.005 (10) | -0.043 to +0.053 | -0.034 | 0.409 | 0.409 |" in views[1][4]


def test_renderers_on_the_committed_evidence_files():
    coverage = rt.render(EVIDENCE / "ece_coverage.json", "ece_coverage", "here")
    assert len(coverage) == 2 + 10 and "| 92 | 1 (calibrated) | 0.000 | 0.051 | 0.107 | 98.0 % |" in coverage
    power = rt.render(EVIDENCE / "selection_power.json", "selection_power", "here")
    assert "| 2 | 1.5 points | 0 | 40.8 % | 22.4 % |" in power and "| 2 | none | 0 | 0.4 % | 0.1 % |" in power
    assert rt.render(POOL / "pool.json", "pool_splits", "here")[2:] == [
        "| coronahack | 216 / 227 | 39 / 40 | 45 / 47 | 614 |", "| kermany | 561 / 557 | 99 / 98 | 140 / 155 | 1,610 |",
        "| all | 1,561 | 276 | 387 | 2,224 |"]
    assert "| all | 4,297 | 0.955 |" in rt.render(POOL / "pool.json", "pool_duplicates", "here")
    assert "| kermany | normal | 800 | 512 | 1.00 | 224 | 89.8 % | 89.8 % |" in \
        rt.render(POOL / "pool.json", "pool_geometry", "here")
    assert rt.render(POOL / "source_features_normal.json", "source_features", "here")[2] == \
        "| as prepared | 0.896 | 0.806 |"
    # counts only: the manifest's file names (patients' files) stay out of the committed file
    assert not re.search(r"\.(jpe?g|png)|person\d|IM-", (POOL / "pool.json").read_text(), re.I)


def test_one_number_format_per_quantity():
    assert [rt.number(v, "p") for v in (0.0004997501249375312, 0.8730634682658671, 0.00001)] == \
        ["0.0005", "0.87", "< 0.0001"]
    assert rt.number(None, "metric") == "—" and rt.interval([0.5, None], "metric_ci") == "—"
    assert rt.interval([0.0042, 0.1181], "share_ci") == "0.00–0.12" and rt.number(0.8, "threshold") == "0.8"
    assert rt.number(1610, "count") == "1,610" and rt.number(0.2245, "percent") == "22.4 %"


# --- prose figures -----------------------------------------------------------------------------------------------

def _prose_figures() -> dict[str, list[str]]:
    """Each figure the prose quotes, as the renderers print it from the committed files: {document: phrases}."""
    n = rt.number
    validation, test, rows = _load("validation_results.json"), _load("test_results.json"), _load("findings.json")
    finding = {(r["split"], r["finding"]): r for r in rows["rows"]}
    shortcut = {r["class"]: r for r in test["source_shortcut"]["by_class"]}
    covid, normal, virus = finding[("test", "COVID-19")], shortcut["normal"], shortcut["virus"]
    children_normal = finding[("validation", "normal")]
    with (RESULTS / "test_predictions.csv").open(newline="") as handle:
        test_patients = len({row["patient_group"] for row in csv.DictReader(handle)})

    def metric(report, key, ci=True):
        return f"{n(report[key], 'metric')}" + (f" ({rt.interval(report['ci95'][key], 'metric_ci')})" if ci else "")

    readme = [f"validation AUROC {n(validation['auroc'], 'metric')}",
              f"Cohen COVID-19 images called virus {covid['called_virus']} of {covid['images']} "
              f"({rt.interval(covid['share_ci95'], 'share_ci')})",
              f"(separation {n(normal['separation'], 'separation')}, p = {n(normal['permutation_p'], 'p')})"]
    readme += _merged_pool_figures()
    sources = test["sources"]
    data = [f"CoronaHack train {sources['train']['coronahack']} / validation {sources['validation']['coronahack']}, "
            f"Cohen test {sources['test']['cohen']}",
            f"accuracy {n(validation['accuracy'], 'metric')} (95 % patient CI "
            f"{rt.interval(validation['ci95']['accuracy'], 'metric_ci')}), AUROC {metric(validation, 'auroc')}, "
            f"sensitivity {metric(validation, 'sensitivity', False)}, specificity "
            f"{metric(validation, 'specificity', False)}",
            f"accuracy {metric(test, 'accuracy')}, AUROC {metric(test, 'auroc')}, sensitivity "
            f"{metric(test, 'sensitivity')}, specificity {metric(test, 'specificity')}",
            f"holds {test['n_positive']} viral and only {test['n'] - test['n_positive']} normal images",
            f"against {children_normal['called_virus']} in {children_normal['images']} of the children's",
            f"({normal['n'][0]} Cohen, {normal['n'][1]} CoronaHack)",
            f"separation **{n(normal['separation'], 'separation')}** (95 % CI "
            f"{rt.interval(normal['separation_ci95'], 'separation_ci')},",
            f"permutation p = {n(normal['permutation_p'], 'p')}",
            f"above the {n(test['source_shortcut']['warning_threshold'], 'threshold')} warning",
            f"among viral images ({virus['n'][0]} vs {virus['n'][1]}) {n(virus['separation'], 'separation')} "
            f"({rt.interval(virus['separation_ci95'], 'separation_ci')}; p = {n(virus['permutation_p'], 'p')})",
            f"({test['n']} images, {test_patients} patients)"]
    data += _phash_figures() + _sample_pool_figures() + _single_sample_figures()
    return {"README.md": readme, "docs/data.md": data, "docs/evidence.md": _evidence_figures()}


def _phash_figures() -> list[str]:
    """docs/data.md's duplicate-threshold bullet, from scripts/phash_distances.py's file. A minimum is quoted rounded
    down and a maximum rounded up, so that "or more" and "at most" stay true."""
    figures = json.loads(PHASH.read_text())
    shared, copies = figures["shared"], figures["copies"]
    within, across = figures["different_within_first"], figures["different_across"]
    rule = figures["rule"]["phash_bits_at_most"]

    def below(kind, bits):
        return sum(count for k, count in kind.items() if int(k) <= bits)

    def at(k):
        return across["bits_counts_below_16"].get(str(k), 0)

    return [f"the {shared['pairs']} images that both samples hold lie at {shared['bits_max']} bits",
            f"{copies['pairs']} JPEG re-encoded (quality {copies['jpeg_quality'][0]}–{copies['jpeg_quality'][-1]}), "
            f"resized ({copies['sides_px'][0]}–{copies['sides_px'][-1]} px) and grey-converted copies of "
            f"{copies['originals']} CoronaHack images at {copies['bits_min']}–{copies['bits_max']} bits, correlating "
            f"{math.floor(copies['correlation_min'] * 1000) / 1000:.3f} or more",
            f"lie as close as {within['bits_min']} bits ({below(within['bits_counts_below_16'], 4)} pairs at 4 bits or "
            f"less, {below(within['two_labels_by_bits'], 4)} of them a normal and a viral child's; "
            f"{within['within_threshold']} pairs within {rule} bits), but their thumbnails correlate at most "
            f"{math.ceil(within['correlation_max'] * 1000) / 1000:.3f}",
            f"lie {across['bits_min']} bits or more apart ({at(8)} pairs at 8, {at(10)} at 10, {at(12)} at 12, "
            f"{at(14)} at 14 of {across['pairs']:,}; median {across['bits_median']:g}) and correlate at most "
            f"{math.ceil(across['correlation_max'] * 1000) / 1000:.3f} when within {rule} bits"]


def _single_sample_figures() -> list[str]:
    """docs/data.md's counts of each sample prepared alone, from docs/results/samples/{coronahack,cohen}.json."""
    corona, cohen = (json.loads((SAMPLES / f"{name}.json").read_text()) for name in ("coronahack", "cohen"))

    def skipped(pool, start):
        return sum(n for reason, n in pool["skipped"].items() if reason.startswith(start))

    def totals(pool, words):
        return " / ".join(f"{split} {pool['split_totals'][split]}" for split in words)

    ch, co = corona["geometry"]["coronahack"], cohen["geometry"]["cohen"]
    assert corona["groups_in_two_splits"] == 0 and all(
        skipped(cohen, f"excluded finding: {f} ") == 1 for f in ("Bacterial", "Legionella", "Lipoid", "Pneumonia"))
    return [f"On the CoronaHack sample ({corona['images'] + sum(corona['skipped'].values())} images): "
            f"{ch['normal']['images']} normal and {ch['virus']['images']} virus kept, "
            f"{sum(corona['skipped'].values())} excluded ({skipped(corona, 'excluded class: bacteria')} bacteria, "
            f"{skipped(corona, 'excluded class: stress-smoking')} stress-smoking/ARDS",
            f"{totals(corona, ('train', 'validation', 'test'))} images, no patient in two splits",
            f"On the Cohen sample ({cohen['images'] + sum(cohen['skipped'].values())} rows;",
            f"{cohen['images']} kept ({co['normal']['images']} normal, {co['virus']['images']} virus; "
            f"{totals(cohen, ('train', 'validation', 'test'))}), {sum(cohen['skipped'].values())} excluded: "
            f"{skipped(cohen, 'excluded finding: todo')} `todo`, {skipped(cohen, 'excluded finding: Streptococcus')} "
            f"Streptococcus, {skipped(cohen, 'excluded finding: Klebsiella')} Klebsiella, 1 each Bacterial, "
            f"Legionella, Lipoid and Pneumonia, {skipped(cohen, 'excluded finding: ARDS')} ARDS alone, "
            f"{skipped(cohen, 'excluded view: L')} laterals, {skipped(cohen, 'excluded modality: CT')} CT slices, "
            f"and the second listing of `000001-27.jpg`"]


def _sample_pool_figures() -> list[str]:
    """docs/data.md's counts of the two samples prepared together, from docs/results/samples/ (written by
    scripts/evidence_figures.py merged-pool) and, for the images both hold, the pHash file."""
    pool = json.loads((SAMPLES / "pool.json").read_text())
    held_out = json.loads((SAMPLES / "pool-test-source-cohen.json").read_text())
    shared = json.loads(PHASH.read_text())["shared"]

    def pairs(splits):
        return ", ".join(f"{split} {splits[split]['normal']}/{splits[split]['virus']}"
                         for split in ("train", "validation", "test"))

    merged = sum(n for reason, n in pool["skipped"].items()
                 if reason.startswith("duplicate: the same image as coronahack/") and "(identical bytes" in reason)
    same_group = sum(n for reason, n in held_out["skipped"].items() if reason.startswith("same patient group"))
    rows = pool["images"] + sum(pool["skipped"].values())
    ext, train = held_out["splits"], held_out["splits"]["coronahack"]["train"]
    assert pool["groups_in_two_splits"] == 0 and held_out["groups_in_two_splits"] == 0
    return [f"{rows} rows, {pool['images']} images kept (coronahack {pairs(pool['splits']['coronahack'])}; cohen "
            f"{pairs(pool['splits']['cohen'])}, as normal/virus); **{shared['pairs']} images found in both sources**",
            f"({shared['bits_max']} bits apart in results/duplicates/phash_distances.json) — {merged} kept once, "
            f"from the CoronaHack side, and the other {shared['pairs'] - merged} excluded",
            f"train {held_out['split_totals']['train']} ({train['normal']} normal / {train['virus']} virus; "
            f"{same_group} CoronaHack images skipped as the same patient group as a Cohen test image) and validation "
            f"{held_out['split_totals']['validation']} from CoronaHack, test {held_out['split_totals']['test']} "
            f"({ext['cohen']['test']['normal']} / {ext['cohen']['test']['virus']}) from Cohen"]


def _merged_pool_figures() -> list[str]:
    """README's merged-pool paragraph: the selection test and the refit's one test, from docs/results/merged-cv."""
    n, folder = rt.number, ROOT / "docs" / "results" / "merged-cv"
    cv = json.loads((folder / "cv_results.json").read_text())
    report = rt.unprefixed(json.loads((folder / "refit" / "test_results.json").read_text()))
    (name, candidate), = cv["selection"]["candidates"].items()
    test = candidate["corrected_t"]
    normal = {r["class"]: r for r in report["source_shortcut"]["by_class"]}["normal"]
    outcome = "did not pass" if not candidate["passes"] else "passed"
    return [f"{n(cv['n_pool'], 'count')} train + validation images",
            f"gained {n(test['mean'], 'metric')} accuracy over {test['n']} paired folds (corrected 95 % CI "
            f"{test['ci95'][0]:+.3f} to {test['ci95'][1]:+.3f}, p {n(candidate['p_holm'], 'p')}) and {outcome}",
            f"tested once on the merged test split ({n(report['n'], 'count')} images)",
            f"accuracy {n(report['accuracy'], 'metric')} ({rt.interval(report['ci95']['accuracy'], 'metric_ci')}), "
            f"AUROC {n(report['auroc'], 'metric')} ({rt.interval(report['ci95']['auroc'], 'metric_ci')})",
            f"(separation {n(normal['separation'], 'separation')}, p = {n(normal['permutation_p'], 'p')})"]


def _evidence_figures() -> list[str]:
    """docs/evidence.md's quoted figures, from docs/results/evidence/ and docs/results/merged-pool/."""
    n = rt.number

    def load(path):
        return json.loads(path.read_text())

    edges, null = load(EVIDENCE / "proportion_edges.json")["rows"], load(EVIDENCE / "shortcut_null.json")
    coverage, power = load(EVIDENCE / "ece_coverage.json")["rows"], load(EVIDENCE / "selection_power.json")
    pool, normal, virus = (load(POOL / name) for name in ("pool.json", "source_features_normal.json",
                                                           "source_features_virus.json"))
    calibrated = next(r for r in coverage if (r["n"], r["sharpen"]) == (92, 1.0))
    passes = {(r["repeats"], r["gain"], r["min_gain"]): r["passes"] for r in power["rows"]}
    one, min_gain = passes[(2, 0.015, 0.0)], (2, 0.015, 0.005)
    cohen, found, totals = pool["cohen"], pool["duplicates"], pool["split_totals"]
    assert cohen["groups_in_two_splits"] == pool["groups_in_two_splits"] == found["merged"] == 0  # "none"
    corona, kermany = (sum(sum(c.values()) for c in pool["splits"][s].values()) for s in ("coronahack", "kermany"))
    sep = {label: {k: v["all_features"] for k, v in d["separation"].items()} for label, d in (("normal", normal),
                                                                                                ("virus", virus))}
    return [
        f"Wilson gives {rt.interval(edges[0]['wilson'], 'metric_ci')} and "
        f"{rt.interval(edges[1]['wilson'], 'metric_ci')}",
        f"it averages {n(calibrated['mean_noise_floor'], 'metric')}, and the calibrated model's plug-in ECE averages "
        f"{n(calibrated['mean_ece'], 'metric')} too",
        f"{calibrated['draws']} draws, {calibrated['n_resamples']} resamples each",
        f"({n(calibrated['mean_debiased'], 'metric')} at n = 92)",
        f"10 patients of {null['images_per_patient']} alike images per source, {null['draws']} draws",
        f"p < 0.05 in {n(null['images_p_below_0.05'], 'percent')} of draws, the patient version in "
        f"{n(null['patients_p_below_0.05'], 'percent')} (mean p {n(null['patients_mean_p'], 'p')}, images "
        f"{n(null['images_mean_p'], 'p')};",
        f"{n(power['simulations'], 'count')} simulated CV runs per row, seed {power['seed']}",
        f"K = {power['n_folds']}, {n(power['n_images'], 'count')} images",
        f"detect a true 1.5-point accuracy gain in {n(one['0.025'], 'percent')} of runs",
        f"one candidate in {n(one['0.05'], 'percent')}",
        f"a min_gain of 0.5 points lowers the one-candidate rate to {n(passes[min_gain]['0.05'], 'percent')}",
        f"({n(passes[(2, 0.0, 0.0)]['0.05'], 'percent')} at alpha 0.05)",
        f"All {cohen['files_listed']} Cohen-derived files",
        f"they form {cohen['patient_groups_kept']} patient groups",
        "the CoronaHack images split " + " / ".join(n(sum(pool["splits"]["coronahack"][s].values()), "count")
                                                    for s in totals) + " there",
        f"{n(pool['images'], 'count')} images kept ({n(corona, 'count')} CoronaHack, {n(kermany, 'count')} Kermany), "
        f"{n(sum(pool['skipped'].values()), 'count')} excluded by class; {n(pool['patient_groups'], 'count')} patient "
        f"groups, none in two splits. Train + validation: "
        f"**{n(totals['train'] + totals['validation'], 'count')} images**",
        f"within {found['phash_threshold']} bits of perceptual hash",
        f"correlate ≥ {n(found['min_correlation'], 'threshold')}. None of the "
        f"{n(sum(found['pairs'].values()), 'count')} candidate pairs reaches it (the highest correlation is "
        f"{n(max(found['max_correlation'].values()), 'correlation')})",
        f"Pairs of kept images within {found['phash_threshold']} bits of pHash",
        f"separation **{n(sep['normal']['as prepared'], 'feature_separation')}** among normal images, "
        f"**{n(sep['virus']['as prepared'], 'feature_separation')}** among viral ones",
        f"leaves that ({n(sep['normal']['grey, shortest side 224'], 'feature_separation')} and "
        f"{n(sep['virus']['grey, shortest side 224'], 'feature_separation')})",
        f"brings it to **{n(sep['normal']['grey, 224 x 224'], 'feature_separation')}** and "
        f"**{n(sep['virus']['grey, 224 x 224'], 'feature_separation')}**",
        *(f"({n(d['sources']['coronahack'], 'count')} CoronaHack, {n(d['sources']['kermany'], 'count')} Kermany;"
          for d in (normal, virus))]


# Numbers in docs/evidence.md's prose that are settings, thresholds or names, not measured figures.
EVIDENCE_SETTINGS = ["95 %", "N(0, 2.5)", "at 2.5 %", "the 0.8 warning level", "alpha 0.025 is the worst case",
                     "≥ 90 % of runs", "row R = 2, 1.5 points", "CC BY-NC-SA 4.0", "Apache-2.0",
                     "1-s2.0-S0929664620300449-gr2_lrg-a"]


def _readme_paragraph() -> str:
    """README's Data section paragraphs that quote figures: the external validation and the merged pool."""
    paragraphs = (ROOT / "README.md").read_text().split("\n\n")
    found = []
    for marker in ("External validation there", "On the merged pool"):
        hits = [p for p in paragraphs if marker in p]
        assert len(hits) == 1, f"README's Data section has no paragraph with {marker!r}"
        found += hits
    return "\n\n".join(found)


def _evidence_prose() -> str:
    """docs/evidence.md without its code blocks and results blocks."""
    text = re.sub(r"```.*?```", "", (ROOT / "docs" / "evidence.md").read_text(), flags=re.S)
    return re.sub(r"<!-- results:.*?<!-- /results -->", "", text, flags=re.S)


def _data_prose() -> str:
    """docs/data.md's counts of the prepared samples and its external validation section, without their code
    blocks and results blocks, and its duplicate thresholds' bullet, which quotes measured figures too."""
    text = (ROOT / "docs" / "data.md").read_text()
    section = text[text.index("On the two samples, `--source CoronaHack --source Cohen`"):]
    for start, end in (("On the CoronaHack sample (", "**Cohen** ("), ("On the Cohen sample (", "**Kermany** (")):
        section += text[text.index(start):text.index(end, text.index(start))]
    bullet = text.index("- **Thresholds chosen from the samples.**")
    section += text[bullet:text.index("- **External validation is one", bullet)]
    section = re.sub(r"```.*?```", "", section, flags=re.S)
    return re.sub(r"<!-- results:.*?<!-- /results -->", "", section, flags=re.S)


@pytest.mark.parametrize("doc", ["README.md", "docs/data.md", "docs/evidence.md"])
def test_prose_quotes_the_figures_of_the_results_files(doc):
    """Each figure the paragraph quotes is found, worded as listed, with the value the file holds; and every decimal
    figure in it is one of those (a new figure needs its entry here). In docs/evidence.md, whose figures are
    simulated rates, a percentage is a figure too, and its settings (EVIDENCE_SETTINGS) are not figures."""
    text = {"README.md": _readme_paragraph, "docs/data.md": _data_prose, "docs/evidence.md": _evidence_prose}[doc]()
    prose = " ".join(text.split())
    phrases = _prose_figures()[doc]
    missing = [phrase for phrase in phrases if phrase not in prose]
    assert not missing, f"{doc} does not quote, in these words, the figures of its results files: {missing}"
    covered = prose
    for phrase in phrases + (EVIDENCE_SETTINGS if doc == "docs/evidence.md" else []):
        covered = covered.replace(phrase, "")
    unbacked = re.findall(r"\d+\.\d+" + (r"|\d+(?:\.\d+)? %" if doc == "docs/evidence.md" else ""), covered)
    assert not unbacked, f"{doc}: figures quoted without a results file behind them: {unbacked}"


def test_prose_check_fails_on_a_changed_figure():
    prose = " ".join(_readme_paragraph().split()).replace("separation 0.91", "separation 0.92")
    assert any(phrase not in prose for phrase in _prose_figures()["README.md"])
    evidence = " ".join(_evidence_prose().split())
    assert all(phrase in evidence for phrase in _prose_figures()["docs/evidence.md"])
    for old, new in (("in 22.4 % of runs", "in 21.4 % of runs"), ("**1,837 images**", "**1,838 images**")):
        assert old in evidence
        assert any(phrase not in evidence.replace(old, new) for phrase in _prose_figures()["docs/evidence.md"])


def test_the_syntax_shown_in_a_code_block_is_no_block(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("```\n<!-- results: docs/results/nowhere/x.json view=median -->\n```\n")
    assert rt.blocks(doc) == [] and rt.main([str(doc), "--root", str(ROOT)]) == 0


def test_refit_seeds_view_gives_each_seed_and_their_spread(tmp_path):
    """scripts/refit_seeds.py on the committed refits writes what the docs show; the view prints every seed and
    the mean ± sd over them."""
    refit_seeds = load_script("refit_seeds")
    folder = ROOT / "docs" / "results"
    out = tmp_path / "seeds.json"
    assert refit_seeds.main(["--refit", f"42={folder / 'merged-cv' / 'refit'}",
                             "--refit", f"1={folder / 'merged-cv-seeds' / 'seed1'}",
                             "--refit", f"2={folder / 'merged-cv-seeds' / 'seed2'}", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads((folder / "merged-cv-seeds" / "seeds.json").read_text())
    lines = rt.render_refit_seeds(json.loads(out.read_text()), "seeds.json")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| 42", "| 1", "| 2", "| mean ± sd"]
    accuracies = [seed["accuracy"] for seed in json.loads(out.read_text())["seeds"].values()]
    assert f"{sum(accuracies) / 3:.3f}" in lines[-1]
    assert refit_seeds.main(["--refit", f"7={tmp_path}", "--out", str(out)]) == 2


def test_readme_sample_counts_are_the_prepared_pools():
    """README's counts of the CoronaHack sample are the CoronaHack part of the merged pool's results file (the
    sample's split is the same whether prepared alone or with Kermany: tests/test_evidence_figures.py)."""
    pool = json.loads((ROOT / "docs" / "results" / "merged-pool" / "pool.json").read_text())
    splits, n = pool["splits"]["coronahack"], rt.number
    kept = {label: sum(part[label] for part in splits.values()) for label in ("normal", "virus")}
    excluded = sum(pool["skipped"].values())  # all 1,610 Kermany-large images are kept: the excluded are CoronaHack's
    phrase = (f"On the CoronaHack sample ({n(pool['by_source']['coronahack'] + excluded, 'count')} images): "
              f"{kept['normal']} normal and {kept['virus']} virus kept, {excluded} excluded; train "
              f"{sum(splits['train'].values())} / validation {sum(splits['validation'].values())} / test "
              f"{sum(splits['test'].values())} images")
    assert phrase in " ".join((ROOT / "README.md").read_text().split())


def test_control_lifts_view_reads_the_control_sessions_file():
    """The positive control's table: one row per family and method the session measured, its verdict at the bar
    from the file's own `passes`, and a family that never learned the marks said so."""
    data = json.loads((ROOT / "docs" / "results" / "explain-control" / "lifts.json").read_text())
    lines = rt.render_control_lifts(data, "lifts.json")
    assert len(lines) == 2 + len(data["lifts"]) + len(data["not_learned"])
    for entry, line in zip(data["lifts"], lines[2:]):
        assert line.startswith(f"| {entry['kind']}, {entry['method']} |")
        assert line.endswith("| passes |" if entry["passes"] else f"| fails (bar {data['bar']:g}) |")
        marked = [(k, v) for k, v in entry["lifts"].items() if k.startswith("marker") and k.endswith(", marked")]
        # each marker model's mean lift, then its lift on each mark (square / bar)
        assert " and ".join(f"{v:.2f} ({entry['marks'][k][0]:.2f} / {entry['marks'][k][1]:.2f})"
                            for k, v in marked) in line
        assert all(abs(v - sum(entry["marks"][k]) / 2) < 1e-9 for k, v in entry["lifts"].items())


def test_phash_distances_on_the_samples_writes_the_committed_file(sample_dir, cohen_dir, tmp_path):
    """scripts/phash_distances.py on the two samples (seconds) writes what docs/data.md quotes."""
    phash_distances = load_script("phash_distances")
    out = tmp_path / "phash_distances.json"
    assert phash_distances.main([str(sample_dir), str(cohen_dir), "--out", str(out)]) == 0
    written, committed = json.loads(out.read_text()), json.loads(PHASH.read_text())
    written["sources"] = committed["sources"]  # folder names differ where the samples are elsewhere
    assert written == committed
    # The close different pairs are what the rule's correlation threshold separates from copies.
    assert committed["copies"]["correlation_min"] >= committed["rule"]["correlation_at_least"]
    assert committed["different_within_first"]["correlation_max"] < committed["rule"]["correlation_at_least"]


def test_the_two_samples_prepared_together_give_the_committed_counts(sample_dir, cohen_dir, tmp_path):
    """`hfxray data prepare` on both samples, then scripts/evidence_figures.py merged-pool (seconds), writes
    docs/results/samples/pool.json, whose counts docs/data.md quotes."""
    prepared = tmp_path / "two"
    subprocess.run([sys.executable, "-m", "hfxray.cli", "data", "prepare", "--source", str(sample_dir),
                    "--source", str(cohen_dir), "--out", str(prepared)], check=True, capture_output=True)
    evidence_figures = load_script("evidence_figures")
    out = tmp_path / "pool.json"
    assert evidence_figures.main(["merged-pool", "--data-dir", str(prepared), "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads((SAMPLES / "pool.json").read_text())
