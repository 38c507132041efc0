"""The figure tables of README.md and docs/*.md, regenerated from the committed results files they quote.

    python scripts/results_tables.py [--check | --write] [DOC.md ...]

A table of figures sits in a block that names its results file and the view that renders it:

    <!-- results: docs/results/NAME/FILE.json view=VIEW -->
    | ... the table as VIEW renders FILE ... |
    <!-- /results -->

The command that wrote FILE stands right above the block (the paragraph or code block before it names the file or
its folder). `--check` (the default) renders every block and prints each one whose text differs from its file
(file:line, the lines found and expected), exit 1; `--write` rewrites the blocks' bodies in place. A block naming a
missing file, an unknown view or a field its file lacks is an error: one line, exit 2. Views: see VIEWS.

Every figure is printed by `number`, so the same quantity reads the same in every table and in the prose checked
by tests/test_results_tables.py. The `cv_summary` and `cv_selection` views call the code that writes
`cv_table.md` (`hfxray.cv.summary_markdown`, `hfxray.selection.selection_markdown`), so a doc shows what
`hfxray cv` wrote.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a file from a checkout: the hfxray beside it, not another install

from hfxray.errors import HfxrayError  # noqa: E402

OPEN = re.compile(r"^<!-- results: (?P<path>\S+) view=(?P<view>\S+) -->$")
OPEN_LIKE = re.compile(r"^<!--\s*results\b")
CLOSE = "<!-- /results -->"
DASH = "—"  # a figure the file does not hold

# How each kind of quantity is printed (as the docs have quoted them): metrics and shares to 3 decimals, the
# Wilson intervals of per-finding shares and the source separation to 2, p-values to 2 significant digits, a
# threshold as it was set; a simulated rate as a percentage to 1 decimal, the separations of plain image features
# (scripts/source_features.py) and thumbnail correlations to 3, image geometry (a width/height ratio) to 2.
FORMATS = {"metric": ".3f", "metric_ci": ".3f", "share": ".3f", "share_ci": ".2f", "separation": ".2f",
           "separation_ci": ".2f", "p": ".2g", "threshold": "g", "count": "d", "percent": ".1f",
           "feature_separation": ".3f", "correlation": ".3f", "ratio": ".2f", "lift": ".2f", "body_lift": ".3f",
           "marks_accuracy": ".2f"}
METRIC_ROWS = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("auroc", "AUROC"),
               ("sensitivity", "sensitivity"), ("specificity", "specificity"))


class ResultsTableError(HfxrayError):
    """A results block that cannot be rendered: its file, view or a field is missing; the message names it."""


def number(value, kind: str) -> str:
    """One figure as the docs print it (FORMATS[kind]); None (not measured) is a dash."""
    if value is None:
        return DASH
    if kind == "count":  # thousands separated, as the docs' prose writes them (1,750 images)
        return f"{int(value):,}"
    if kind == "p" and value < 0.0001:
        return "< 0.0001"
    if kind == "percent":  # a share (0-1) printed as a percentage
        return f"{format(100 * float(value), FORMATS[kind])} %"
    return format(float(value), FORMATS[kind])


def interval(bounds, kind: str) -> str:
    """A 95 % interval as `low–high`; a dash when the file holds none."""
    if not bounds or None in bounds:
        return DASH
    return f"{number(bounds[0], kind)}–{number(bounds[1], kind)}"


def unprefixed(report: dict) -> dict:
    """A split report with the Trainer-style prefix (`test_accuracy`, as training and the CV refit write
    test_results.json) removed; `hfxray evaluate --out` writes it without one."""
    if "n" in report:
        return report
    for prefix in ("test_", "validation_"):
        if f"{prefix}n" in report:
            return {key[len(prefix):]: value for key, value in report.items() if key.startswith(prefix)}
    return report


def need(data: dict, key: str, what: str):
    if not isinstance(data, dict) or key not in data:
        raise ResultsTableError(f"{what} has no `{key}`. To fix: point the block at the file that holds it, or "
                                "choose a view for this file.")
    return data[key]


def _table(header: list[str], align: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def _with_ci(report: dict, metric: str) -> str:
    value = report.get(metric)
    ci = (report.get("ci95") or {}).get(metric)
    return number(value, "metric") + ("" if value is None or not ci else f" ({interval(ci, 'metric_ci')})")


def render_metrics(data: dict, what: str) -> list[str]:
    """metric | value | 95 % CI of one split report (test_results.json, validation_results.json)."""
    report = unprefixed(data)
    ci = need(report, "ci95", what)
    rows = [["images (virus)", f"{number(need(report, 'n', what), 'count')} "
             f"({number(need(report, 'n_positive', what), 'count')})", ""]]
    rows += [[label, number(report.get(key), "metric"), interval(ci.get(key), "metric_ci")]
             for key, label in METRIC_ROWS]
    return _table(["metric", "value", "95 % CI"], ["---", "---:", "---"], rows)


def render_by_source(data: dict, what: str) -> list[str]:
    """One row per source of a multi-source split report: images and each metric with its interval."""
    by_source = need(unprefixed(data), "by_source", what)
    rows = [[name, f"{number(report.get('n'), 'count')} ({number(report.get('n_positive'), 'count')})",
             *(_with_ci(report, key) for key, _ in METRIC_ROWS)] for name, report in by_source.items()]
    return _table(["source", "images (virus)", *(f"{label} (95 % CI)" for _, label in METRIC_ROWS)],
                  ["---", "---:", *["---"] * len(METRIC_ROWS)], rows)


def render_shortcut(data: dict, what: str) -> list[str]:
    """The source shortcut check per class: separation, its interval, the permutation p."""
    check = need(unprefixed(data), "source_shortcut", what)
    rows = [[row["class"], " vs ".join(row["sources"]), " / ".join(number(n, "count") for n in row["n"]),
             number(row["separation"], "separation"), interval(row.get("separation_ci95"), "separation_ci"),
             number(row.get("permutation_p"), "p")] for row in need(check, "by_class", what)]
    if not rows:
        rows = [[DASH, f"no class has images of two sources among the {check.get('images')}", "", "", "", ""]]
    return _table(["class", "sources", "images", "separation", "95 % CI", "permutation p"],
                  ["---", "---", "---:", "---:", "---", "---:"], rows)


def render_findings(data: dict, what: str) -> list[str]:
    """scripts/external_findings.py's rows: images called virus per split, source and finding."""
    rows = [[row["split"], row["source"], row["finding"],
             f"{number(row['called_virus'], 'count')} / {number(row['images'], 'count')} "
             f"({number(row['patients'], 'count')} patient{'' if row['patients'] == 1 else 's'})",
             f"{number(row['share_called_virus'], 'share')} ({interval(row['share_ci95'], 'share_ci')})"]
            for row in need(data, "rows", what)]
    return _table(["split", "source", "finding", "called virus", "share (95 % CI)"],
                  ["---", "---", "---", "---:", "---"], rows)


def render_cv_summary(data: dict, what: str) -> list[str]:
    """cv_table.md's CV table and paired comparison, by the function that writes them."""
    from hfxray.cv import summary_markdown

    need(data, "variants", what)
    return summary_markdown(data)


def render_cv_selection(data: dict, what: str) -> list[str]:
    """cv_table.md's selection test, by the function that writes it."""
    from hfxray.selection import selection_markdown

    return selection_markdown(need(data, "selection", what))


def render_ece_coverage(data: dict, what: str) -> list[str]:
    """scripts/evidence_figures.py ece-coverage: the ECE interval's coverage per simulated n and sharpening s."""
    rows = [[number(r["n"], "count"), "1 (calibrated)" if r["sharpen"] == 1 else number(r["sharpen"], "threshold"),
             number(r["true_ece"], "metric"), number(r["mean_debiased"], "metric"), number(r["mean_width"], "metric"),
             number(r["coverage"], "percent")] for r in need(data, "rows", what)]
    return _table(["n", "s", "true ECE", "mean debiased ECE", "mean width", "covers the true ECE"],
                  ["---:"] * 6, rows)


def _points(gain: float) -> str:
    return "none" if not gain else f"{number(100 * gain, 'threshold')} points"


def render_selection_power(data: dict, what: str) -> list[str]:
    """scripts/evidence_figures.py selection-power: share of simulated CV runs in which a candidate passes."""
    alphas = [str(a) for a in need(data, "alphas", what)]
    rows = [[number(r["repeats"], "count"), _points(r["gain"]), _points(r["min_gain"]).replace("none", "0"),
             *(number(r["passes"][a], "percent") for a in alphas)] for r in need(data, "rows", what)]
    return _table(["R", "true gain", "min_gain", *(f"passes at alpha {a}" for a in alphas)],
                  ["---:"] * (3 + len(alphas)), rows)


def render_pool_splits(data: dict, what: str) -> list[str]:
    """scripts/evidence_figures.py merged-pool: kept images per source and split, normal / virus."""
    splits = need(data, "split_totals", what)
    rows = [[source, *(f"{number(by[s]['normal'], 'count')} / {number(by[s]['virus'], 'count')}" for s in splits),
             number(sum(sum(c.values()) for c in by.values()), "count")]
            for source, by in need(data, "splits", what).items()]
    rows.append(["all", *(number(n, "count") for n in splits.values()), number(need(data, "images", what), "count")])
    return _table(["source", *(f"{s} (normal / virus)" for s in splits), "images"],
                  ["---", *["---:"] * (len(splits) + 1)], rows)


def render_pool_geometry(data: dict, what: str) -> list[str]:
    """scripts/evidence_figures.py merged-pool: the kept images' size and mode per source and class."""
    rows = [[source, label, number(g["images"], "count"), number(g["longer_side_max"], "count"),
             number(g["aspect_median"], "ratio"), number(g["shortest_side_median"], "count"),
             number(g["share_224_square"], "percent"), number(g["share_rgb"], "percent")]
            for source, by in need(data, "geometry", what).items() for label, g in by.items()]
    return _table(["source", "class", "images", "longest side (px, max)", "width / height (median)",
                   "shortest side (px, median)", "224 × 224", "RGB"], ["---", "---", *["---:"] * 6], rows)


def render_pool_duplicates(data: dict, what: str) -> list[str]:
    """scripts/evidence_figures.py merged-pool: candidate pairs within the hash threshold and their correlation."""
    found = need(data, "duplicates", what)
    rows = [[f"within {name}" if name != "across" else "across the sources", number(n, "count"),
             number(found["max_correlation"][name], "correlation")] for name, n in found["pairs"].items()]
    rows.append(["all", number(sum(found["pairs"].values()), "count"),
                 number(max((c for c in found["max_correlation"].values() if c is not None), default=None),
                        "correlation")])
    return _table(["pairs", f"within {number(found['phash_threshold'], 'count')} bits of pHash",
                   "highest thumbnail correlation"], ["---", "---:", "---:"], rows)


def render_source_features(data: dict, what: str) -> list[str]:
    """scripts/source_features.py --out: the separation of the sources per preprocessing variant."""
    rows = [[name, number(r["all_features"], "feature_separation"), number(r["sharpness_only"], "feature_separation")]
            for name, r in need(data, "separation", what).items()]
    return _table(["variant", "separation, all features", "sharpness alone"], ["---", "---:", "---:"], rows)


def render_refit_seeds(data: dict, what: str) -> list[str]:
    """scripts/refit_seeds.py: one row per training seed of a refit, then the mean ± sd over the seeds."""
    seeds = need(data, "seeds", what)
    sources = sorted({name for row in seeds.values() for name in row["accuracy_by_source"]})
    rows = [[seed, f"{number(row['accuracy'], 'metric')} ({interval(row['accuracy_ci95'], 'metric_ci')})",
             f"{number(row['auroc'], 'metric')} ({interval(row['auroc_ci95'], 'metric_ci')})",
             *(number(row["accuracy_by_source"].get(name), "metric") for name in sources),
             f"{number(row['normal_separation'], 'separation')} "
             f"({interval(row['normal_separation_ci95'], 'separation_ci')}, p {number(row['normal_permutation_p'], 'p')})"]
            for seed, row in seeds.items()]
    over = need(data, "over_seeds", what)

    def spread(key: str, kind: str) -> str:
        entry = over[key]
        return number(entry["mean"], kind) + ("" if entry["sd"] is None else f" ± {number(entry['sd'], kind)}")

    rows.append(["mean ± sd", spread("accuracy", "metric"), spread("auroc", "metric"), *([""] * len(sources)),
                 spread("normal_separation", "separation")])
    return _table(["seed", "accuracy (95 % CI)", "AUROC (95 % CI)", *(f"accuracy, {name}" for name in sources),
                   "separation among normal images (95 % CI, p)"],
                  ["---", "---", "---", *["---:"] * len(sources), "---"], rows)


def render_control_lifts(data: dict, what: str) -> list[str]:
    """tests/test_explain_control.py's session ($HFXRAY_CONTROL_RESULTS): per family and method, the marker
    models' held-out accuracy on the marks, the share of their decisions kept when each image is normalised with
    the other mark's GroupNorm statistics, the share of unmarked images they call "virus", the mean lifts in the marks' boxes (per mark: square / bar), and the
    verdict at the bar."""
    accuracy = need(data, "accuracy", what)
    swapped = need(data, "statistics_swapped", what)
    unmarked = need(data, "unmarked_virus", what)
    bar = number(need(data, "bar", what), "threshold")
    rows = []
    for entry in need(data, "lifts", what):
        lifts, marks = entry["lifts"], entry.get("marks", {})

        def lift_text(name: str) -> str:
            text = number(lifts[name], "lift")
            if name in marks:
                text += " (" + " / ".join(number(value, "lift") for value in marks[name]) + ")"
            return text

        def joined(suffix: str) -> str:
            return " and ".join(lift_text(k) for k in lifts if k.startswith("marker") and k.endswith(suffix)) or DASH

        kind = entry["kind"]
        shares = [" and ".join(number(a, "marks_accuracy") for a in per_kind.get(kind, [])) or DASH
                  for per_kind in (accuracy, swapped, unmarked)]
        rows.append([f"{kind}, {entry['method']}", *shares, joined(", marked"),
                     joined(", unmarked"),
                     lift_text("clean model, marked") if "clean model, marked" in lifts else DASH,
                     "passes" if entry["passes"] else f"fails (bar {bar})"])
    for kind, message in sorted(data.get("not_learned", {}).items()):
        rows.append([kind, message, DASH, DASH, DASH, DASH, DASH, "not learned"])
    return _table(["family, method", "held-out accuracy on the marks", "decisions kept, statistics swapped",
                   "unmarked images called virus", "marker models, marked (square / bar)", "same models, unmarked",
                   "clean model, marked", "result"], ["---", "---", "---", "---", "---", "---", "---", "---"], rows)


def render_explain_cascading(data: dict, what: str) -> list[str]:
    """tests/test_explain_real.py ($HFXRAY_EXPLAIN_RESULTS): cascading randomisation per kind, of the map each kind
    shows (`method`) on 16 test images: mean |Spearman| to the trained maps after each step (top layer first), the
    random-vs-random baseline."""
    rows = []
    for kind, entry in sorted(need(data, "cascading", what).items()):
        steps = ", ".join(number(step["spearman"], "lift") for step in entry["steps"])
        layers = ", ".join(step["layer"] for step in entry["steps"])
        rows.append([kind, entry["method"], str(entry["images"]), layers, steps,
                     number(entry["baseline"]["spearman"], "lift"), "pass" if entry["passed"] else "fail"])
    return _table(["kind", "map", "images", "re-initialised, cumulatively", "mean abs. Spearman after each step",
                   "random vs random", "verdict"], ["---", "---", "---:", "---", "---", "---:", "---"], rows)


def render_explain_data_randomisation(data: dict, what: str) -> list[str]:
    """tests/test_explain_real.py ($HFXRAY_EXPLAIN_RESULTS): data randomisation per kind, of the map each kind shows:
    mean |Spearman| (and SSIM) between the real model's maps and those of the same kind trained on permuted labels,
    the random-vs-random baseline, and the verdict."""
    rows = [[kind, entry["method"], str(entry["images"]), number(entry["spearman"], "lift"),
             number(entry["ssim"], "lift"), number(entry["baseline"]["spearman"], "lift"),
             "pass" if entry["passed"] else "fail"]
            for kind, entry in sorted(need(data, "data_randomisation", what).items())]
    return _table(["kind", "map", "images", "mean abs. Spearman, real vs permuted-label model", "SSIM",
                   "random vs random", "verdict"], ["---", "---", "---:", "---:", "---:", "---:", "---"], rows)


def render_explain_localisation(data: dict, what: str) -> list[str]:
    """tests/test_explain_real.py ($HFXRAY_EXPLAIN_RESULTS): lift of the Grad-CAM maps over the body and, on the
    images with a dark border, over the border (a uniform map: 1)."""
    rows = [[kind, number(entry["images"], "count"), f"{number(entry['body_lift'], 'body_lift')} "
             f"({number(entry['body_area'], 'share')})", number(entry["bordered_images"], "count"),
             f"{number(entry['border_lift'], 'lift')} ({interval(entry['border_lift_range'], 'lift')})",
             number(entry["border_area"], "lift")]
            for kind, entry in sorted(need(data, "localisation", what).items())]
    return _table(["kind", "maps", "body lift (body's share of the crop)", "bordered images",
                   "border lift (range)", "border's share of the crop"],
                  ["---", "---:", "---", "---:", "---", "---:"], rows)


VIEWS = {"metrics": render_metrics, "by_source": render_by_source, "shortcut": render_shortcut,
         "findings": render_findings, "cv_summary": render_cv_summary, "cv_selection": render_cv_selection,
         "ece_coverage": render_ece_coverage, "selection_power": render_selection_power,
         "pool_splits": render_pool_splits, "pool_geometry": render_pool_geometry,
         "pool_duplicates": render_pool_duplicates, "source_features": render_source_features,
         "refit_seeds": render_refit_seeds, "control_lifts": render_control_lifts,
         "explain_cascading": render_explain_cascading, "explain_localisation": render_explain_localisation,
         "explain_data_randomisation": render_explain_data_randomisation}


def trimmed(lines: list[str]) -> list[str]:
    """Without leading and trailing blank lines (a block's body starts and ends with text)."""
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def render(path: Path, view: str, where: str) -> list[str]:
    """The body of a block naming `path` (a results file) and `view`."""
    if view not in VIEWS:
        raise ResultsTableError(f"{where}: unknown view {view!r}. To fix: use one of {', '.join(VIEWS)}.")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsTableError(f"{where}: results file {shown(path)} does not exist. To fix: commit the file the "
                                "command above the block writes, or correct the path.") from None
    except (OSError, ValueError) as err:
        raise ResultsTableError(f"{where}: cannot read {shown(path)} as JSON ({err}). To fix: write it again with the "
                                "command above the block.") from None
    try:
        return trimmed(VIEWS[view](data, f"{where}: {path.name}"))
    except (KeyError, TypeError, IndexError) as err:
        raise ResultsTableError(f"{where}: {path.name} does not have the fields view={view} reads ({err!r}). To "
                                "fix: choose the view for this file.") from None


class Block(NamedTuple):
    doc: Path
    line: int  # 1-based line of the opening comment
    path: str
    view: str
    start: int  # index of the first body line
    end: int  # index of the closing comment
    body: list[str]
    above: str  # the paragraph or code block right above the opening comment

    @property
    def where(self) -> str:
        return f"{shown(self.doc)}:{self.line}"


def shown(doc: Path) -> str:
    try:
        return str(doc.resolve().relative_to(ROOT))
    except ValueError:
        return str(doc)


def _above(lines: list[str], index: int) -> str:
    """The paragraph or fenced code block ending right above line `index` (blank lines between skipped)."""
    i = index - 1
    while i >= 0 and not lines[i].strip():
        i -= 1
    if i < 0:
        return ""
    end = i
    if lines[i].startswith("```"):
        i -= 1
        while i >= 0 and not lines[i].startswith("```"):
            i -= 1
    else:
        while i >= 0 and lines[i].strip():
            i -= 1
    return "\n".join(lines[max(i, 0):end + 1])


def blocks(doc: Path) -> list[Block]:
    """The results blocks of one Markdown file, in order."""
    lines = doc.read_text().split("\n")
    found, i, fenced = [], 0, False
    while i < len(lines):
        fenced ^= lines[i].lstrip().startswith("```")  # an example of the syntax in a code block is no block
        match = None if fenced else OPEN.match(lines[i])
        if not match:
            if not fenced and OPEN_LIKE.match(lines[i]):
                raise ResultsTableError(f"{shown(doc)}:{i + 1}: malformed results comment {lines[i]!r}. To fix: "
                                        "write `<!-- results: docs/results/NAME/FILE.json view=VIEW -->`.")
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j] == CLOSE or OPEN.match(lines[j])), None)
        if end is None or lines[end] != CLOSE:
            raise ResultsTableError(f"{shown(doc)}:{i + 1}: results block is not closed. To fix: end it with "
                                    f"`{CLOSE}` on a line of its own.")
        found.append(Block(doc, i + 1, match["path"], match["view"], i + 1, end, lines[i + 1:end],
                           _above(lines, i)))
        i = end + 1
    return found


def command_named(block: Block) -> bool:
    """Whether the text right above the block names its results file or folder (the command that wrote it)."""
    folder = block.path.rsplit("/", 1)[0]
    return block.path in block.above or re.search(re.escape(folder) + r"(?![\w.-])", block.above) is not None


def default_docs(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def check(docs: list[Path], root: Path, write: bool = False, out=None) -> int:
    """0 when every block agrees with its file (or, with `write`, after rewriting those that did not), else 1;
    what differs is printed to `out` (default: standard output)."""
    out = out or sys.stdout
    status = 0
    for doc in docs:
        lines = doc.read_text().split("\n")
        changed = False
        for block in reversed(blocks(doc)):  # from the end, so earlier blocks' indices stay valid on rewrite
            expected = render(root / block.path, block.view, block.where)
            if not command_named(block):
                status = 1
                print(f"{block.where}: no command writing {block.path} right above the block. To fix: put the "
                      "command that writes it (naming the file or its folder) in the paragraph or code block "
                      "before the block.", file=out)
            if expected == block.body:
                continue
            if write:
                lines[block.start:block.end] = expected
                changed = True
                print(f"{block.where}: rewritten from {block.path} (view={block.view})", file=out)
                continue
            status = 1
            print(f"{block.where}: results block ({block.path} view={block.view}) differs from its file:", file=out)
            for line in difflib.unified_diff(block.body, expected, "found in the doc", "rendered from the file",
                                             lineterm="", n=0):
                print("    " + line, file=out)
        if changed:
            doc.write_text("\n".join(lines))
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="report blocks that differ from their files (default)")
    mode.add_argument("--write", action="store_true", help="rewrite the blocks' bodies from their files")
    parser.add_argument("--root", default=str(ROOT), help="the folder results paths are relative to")
    parser.add_argument("docs", nargs="*", help="Markdown files (default: README.md and docs/*.md under --root)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    docs = [Path(d) for d in args.docs] or default_docs(root)
    try:
        status = check(docs, root, write=args.write)
    except (HfxrayError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if status == 0:
        print(f"{sum(len(blocks(d)) for d in docs)} results block(s) agree with their files")
    return status


if __name__ == "__main__":
    sys.exit(main())
