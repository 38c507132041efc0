"""scripts/results_tables.py: every figure table in README.md and docs/*.md is what its results file renders to,
and the figures the prose quotes are the ones those files hold."""

import csv
import importlib.util
import io
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "external-cohen"
CV_EXAMPLE = Path(__file__).resolve().parent / "data" / "cv-example"


def _script():
    spec = importlib.util.spec_from_file_location("results_tables", ROOT / "scripts" / "results_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
     "unknown view 'median'. To fix: use one of metrics, by_source, shortcut, findings, cv_summary, cv_selection."),
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


def test_one_number_format_per_quantity():
    assert [rt.number(v, "p") for v in (0.0004997501249375312, 0.8730634682658671, 0.00001)] == \
        ["0.0005", "0.87", "< 0.0001"]
    assert rt.number(None, "metric") == "—" and rt.interval([0.5, None], "metric_ci") == "—"
    assert rt.interval([0.0042, 0.1181], "share_ci") == "0.00–0.12" and rt.number(0.8, "threshold") == "0.8"


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
    return {"README.md": readme, "docs/data.md": data}


def _readme_paragraph() -> str:
    paragraphs = (ROOT / "README.md").read_text().split("\n\n")
    found = [p for p in paragraphs if "External validation there" in p]
    assert len(found) == 1, "README's Data section has no paragraph with 'External validation there'"
    return found[0]


def _data_prose() -> str:
    """docs/data.md's external validation section without its code blocks and results blocks."""
    text = (ROOT / "docs" / "data.md").read_text()
    section = text[text.index("External validation on the samples"):]
    section = re.sub(r"```.*?```", "", section, flags=re.S)
    return re.sub(r"<!-- results:.*?<!-- /results -->", "", section, flags=re.S)


@pytest.mark.parametrize("doc", ["README.md", "docs/data.md"])
def test_prose_quotes_the_figures_of_the_results_files(doc):
    """Each figure the paragraph quotes is found, worded as listed, with the value the file holds; and every decimal
    figure in it is one of those (a new figure needs its entry here)."""
    prose = " ".join((_readme_paragraph() if doc == "README.md" else _data_prose()).split())
    phrases = _prose_figures()[doc]
    missing = [phrase for phrase in phrases if phrase not in prose]
    assert not missing, f"{doc} does not quote, in these words, the figures of docs/results/external-cohen/: {missing}"
    covered = prose
    for phrase in phrases:
        covered = covered.replace(phrase, "")
    assert not re.findall(r"\d+\.\d+", covered), f"{doc}: figures quoted without a results file behind them"


def test_prose_check_fails_on_a_changed_figure():
    prose = " ".join(_readme_paragraph().split()).replace("separation 0.91", "separation 0.92")
    assert any(phrase not in prose for phrase in _prose_figures()["README.md"])


def test_the_syntax_shown_in_a_code_block_is_no_block(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("```\n<!-- results: docs/results/nowhere/x.json view=median -->\n```\n")
    assert rt.blocks(doc) == [] and rt.main([str(doc), "--root", str(ROOT)]) == 0
