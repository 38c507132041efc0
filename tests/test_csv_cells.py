"""CSV cells that a spreadsheet would run as a formula (OWASP: `=`, `+`, `-`, `@`, tab, CR at the start) are
written quoted in every CSV hfxray writes (manifest.csv, predictions, explain's summary), and read back exactly."""

from __future__ import annotations

import csv
import io
import shutil

from hypothesis import given, settings
from hypothesis import strategies as st

from hfxray import data
from hfxray.outputs import FORMULA_START, csv_row, read_csv_row
from test_data import QUIET, KaggleSource

HOSTILE = ["=1+1.jpeg", "@SUM(A1).jpeg", "+cmd.jpeg", "-2.jpeg", "'quoted.jpeg"]
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
starts = st.sampled_from([*FORMULA_START, "'", "''", "", "a", " "])
cell = st.one_of(st.builds(lambda a, b: a + b, starts, text), st.integers(-10**6, 10**6),
                 st.floats(allow_nan=False, allow_infinity=False, width=32))


def _raw_rows(csv_text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(csv_text, newline="")))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(cell, min_size=3, max_size=3), min_size=1, max_size=5))
def test_every_cell_round_trips_and_no_text_cell_starts_a_formula(rows):
    fields = ["a", "b", "c"]
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(csv_row(dict(zip(fields, row))) for row in rows)
    raw = _raw_rows(buffer.getvalue())
    back = [read_csv_row(row) for row in raw]
    assert back == [{k: str(v) if not isinstance(v, float) else repr(v) for k, v in zip(fields, row)} for row in rows]
    for written, row in zip(raw, rows):
        for key, value in zip(fields, row):
            if isinstance(value, str):
                assert not written[key].startswith(FORMULA_START), written[key]
            else:  # hfxray's own numbers stay numbers, a negative one included
                assert written[key] == (repr(value) if isinstance(value, float) else str(value))


def test_the_manifest_quotes_hostile_names_and_read_manifest_gives_them_back(tmp_path):
    source = KaggleSource(tmp_path / "kaggle")
    source.add_good()
    for name in HOSTILE:
        source.add(name, format="JPEG")
    source.write_csv()
    data.prepare(source.root, tmp_path / "out", **QUIET)
    raw = {row["source_file"]: row for row in _raw_rows((tmp_path / "out" / data.MANIFEST_NAME).read_text())}
    by_source = {row["source_file"]: row for row in data.read_manifest(tmp_path / "out")}
    for name in HOSTILE:
        written = raw["'" + name]
        assert by_source[name]["status"] == "kept", by_source[name]
        assert all(not value.startswith(FORMULA_START) for value in written.values() if value), written
    assert all(row["width"].isdigit() for row in raw.values() if row["status"] == "kept")  # numbers stay numbers


def test_predictions_and_explain_summaries_quote_hostile_names(tiny_models, sample_dir, tmp_path, monkeypatch):
    from hfxray.explain import explain
    from hfxray.predict import Prediction, write_predictions
    from hfxray.serve import find_examples

    out = tmp_path / "predictions.csv"
    write_predictions([Prediction("=HYPERLINK(\"x\")", "virus", 0.75, 0.75), Prediction("@x", error="-bad file")],
                      out)
    rows = _raw_rows(out.read_text())
    assert [row["file"] for row in rows] == ["'=HYPERLINK(\"x\")", "'@x"] and rows[1]["error"] == "'-bad file"
    assert rows[0]["probability"] == "0.75"

    image = tmp_path / "images" / "+cmd|' A1.jpeg"
    image.parent.mkdir()
    shutil.copy(find_examples(sample_dir, count=1)[0], image)
    monkeypatch.chdir(image.parent)  # the summary names an image as it was given: here, its bare name
    explain(str(tiny_models / "vit"), "rollout", [image.name], tmp_path / "maps")
    [summary] = (tmp_path / "maps").glob("*.rollout.csv")
    [row] = _raw_rows(summary.read_text())
    assert row["image"] == "'" + image.name
    assert not any(value.startswith(FORMULA_START) for value in row.values())
