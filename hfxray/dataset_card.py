"""The dataset card of a dataset repo written by `hfxray data push` (huggingface_hub's DatasetCard).

Every number is read from the prepared manifest (counts, patient groups, duplicates, exclusions, licences), never
typed in; the metadata carries `configs`, so `datasets.load_dataset(REPO)` finds the three splits.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

from .data import CLASS_NAMES, SPLITS
from .data.kermany import KERMANY_IM, KERMANY_PERSON
from .errors import HfxrayError, excerpt, printable

SHARD = "data/{split}-00000-of-00001.parquet"
KERMANY_LICENSE = "CC BY 4.0"
NOT_STATED = "not stated"
# Licence texts as the sources write them -> Hub license ids; a text without a version (e.g. "CC BY-NC-SA") maps
# to "other" rather than to a guessed version.
HUB_LICENSES = {
    "cc by 4.0": "cc-by-4.0", "cc by 3.0": "cc-by-3.0", "cc by-sa 4.0": "cc-by-sa-4.0", "cc by-nc 4.0": "cc-by-nc-4.0",
    "cc by-nc-sa 4.0": "cc-by-nc-sa-4.0", "cc by-nc-sa 3.0": "cc-by-nc-sa-3.0", "cc by-nc-nd 4.0": "cc-by-nc-nd-4.0",
    "cc by-nc-nd 3.0": "cc-by-nc-nd-3.0", "apache 2.0": "apache-2.0", "cc0": "cc0-1.0", NOT_STATED: "unknown",
}
CITATIONS = [
    "Kermany D. S., Goldbaum M., Cai W. et al. Identifying Medical Diagnoses and Treatable Diseases by Image-Based "
    "Deep Learning. Cell 172(5):1122-1131, 2018. doi:10.1016/j.cell.2018.02.010. Data: Mendeley Data V2, "
    "doi:10.17632/rscbjbr9sj.2 (CC BY 4.0).",
    "Cohen J. P., Morrison P., Dao L. COVID-19 image data collection. arXiv:2003.11597, 2020 "
    "(github.com/ieee8023/covid-chestxray-dataset; a licence per image in its metadata.csv).",
    "Kaggle CoronaHack - Chest X-Ray-Dataset (praveengovi/coronahack-chest-xraydataset), which combines the two.",
]


class LicenseError(HfxrayError):
    """The Cohen metadata given for per-image licences cannot be read."""


def cohen_licenses(metadata_csv: str | os.PathLike | None) -> dict[str, str]:
    """file name -> licence as the Cohen collection's metadata.csv states it (its first non-empty one)."""
    if metadata_csv is None:
        return {}
    try:
        with Path(metadata_csv).open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise LicenseError(f"--cohen-metadata {printable(str(metadata_csv))}: cannot read it ({excerpt(err, 80)})"
                           ". To fix: pass the Cohen collection's metadata.csv.") from None
    if rows and not {"filename", "license"} <= set(rows[0]):
        raise LicenseError(f"--cohen-metadata {printable(str(metadata_csv))}: no `filename` and `license` "
                           "columns. To fix: pass the Cohen collection's metadata.csv.")
    found: dict[str, str] = {}
    for row in rows:
        name, text = (row.get("filename") or "").strip(), (row.get("license") or "").strip()
        if name and text and name not in found:
            found[name] = text
    return found


def is_kermany(row: dict[str, str]) -> bool:
    """A Kermany et al. image: read from a Kermany layout, or named by its patterns inside CoronaHack."""
    name = row.get("source_file", "")
    return row.get("format") == "kermany" or bool(KERMANY_PERSON.match(name) or KERMANY_IM.match(name))


def row_license(row: dict[str, str], cohen: dict[str, str]) -> str:
    """The licence of a kept image as its source states it: Kermany et al. CC BY 4.0; a Cohen collection image
    (directly, or through CoronaHack) its own `license` from the collection's metadata.csv; else "not stated"."""
    if is_kermany(row):
        return KERMANY_LICENSE
    return cohen.get(row.get("source_file", ""), NOT_STATED)


def hub_license(text: str) -> str:
    """The Hub license id of a licence text ("other" when it has none, or names no version)."""
    return HUB_LICENSES.get(" ".join(text.lower().split()), "other")


TAGS = ["medical-imaging", "chest-x-ray", "pneumonia", "covid-19", "hfxray"]
COLUMNS = [
    ("image", "the X-ray, its original bytes (PNG or JPEG as prepared)"),
    ("label", "ClassLabel: 0 `normal`, 1 `virus`"),
    ("patient_group", "the patient (or joined patients) the image belongs to: never split across train, validation "
                      "and test by hfxray; keep it when re-splitting (e.g. `GroupKFold`)"),
    ("source", "the source collection the image was read from"),
    ("source_file", "the image's file name in its source"),
    ("file", "the image's path in the prepared ImageFolder"),
    ("license", "the image's licence as its source states it (`not stated` when it states none)"),
]


def _table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def _counts(kept: list[dict], splits: list[str]) -> str:
    rows = []
    for split in splits:
        members = [row for row in kept if row["split"] == split]
        by_label = Counter(row["label"] for row in members)
        rows.append([split, *(by_label[name] for name in CLASS_NAMES), len(members),
                     len({row["patient_group"] for row in members})])
    by_label = Counter(row["label"] for row in kept)
    rows.append(["**all**", *(by_label[name] for name in CLASS_NAMES), len(kept),
                 len({row["patient_group"] for row in kept})])
    return _table(["split", *CLASS_NAMES, "images", "patient groups"], rows)


def _split_text(kept: list[dict]) -> str:
    test = {row["patient_group"] for row in kept if row["split"] == "test"}
    train = {row["patient_group"] for row in kept if row["split"] == "train"}
    validation = {row["patient_group"] for row in kept if row["split"] == "validation"}
    text = ("Splits are made by patient, not by image (hfxray `data prepare`): a source's own TRAIN/TEST split is "
            "kept as train/test; a source without one (the Cohen collection) has a share of each class's patients "
            "(`--test-fraction`, 0.15 by default) carved into test, or one source is the whole test split "
            "(`--test-source`, external validation); validation is then carved out of train by patient group "
            "(`--val-fraction`, seeded). A patient group is "
            "a Kermany patient number read from the file name (`personN_*`, `IM-NNNN-*`), a Cohen `patientid`, or "
            "the image itself when neither is known; images that are one picture held twice join their groups. "
            f"Patient groups in both train and validation: {len(train & validation)}.")
    by_split = {split: Counter(row.get("source", "") for row in kept if row["split"] == split)
                for split in SPLITS}
    text += "\n\nSources per split: " + "; ".join(
        f"{split} " + ", ".join(f"{printable(source)} {n}" for source, n in counts.most_common())
        for split, counts in by_split.items() if counts) + "."
    shared = test & (train | validation)
    if shared:
        text += (f"\n\n**Warning:** {len(shared)} patient group(s) of the test split also appear in train or "
                 "validation, because a source's own TRAIN/TEST split shares them and hfxray keeps that split "
                 "(e.g. " + ", ".join(f"`{printable(g)}`" for g in sorted(shared)[:5]) + ").")
    else:
        text += " No patient group of the test split appears in train or validation."
    return text


def _skipped_text(rows: list[dict]) -> str:
    skipped = [row for row in rows if row.get("status") != "kept"]
    duplicates = [row for row in skipped if row.get("reason", "").startswith("duplicate")]
    merged = [row for row in rows if row.get("status") == "kept" and row.get("merged_with")]
    kinds = Counter(row.get("reason", "").split(":")[0] or "unknown" for row in skipped)
    text = [f"The sources list {len(rows)} images; {len(rows) - len(skipped)} are kept here. Exact and near "
            "duplicates (SHA-256, then a perceptual hash confirmed by thumbnail correlation) are kept once: "
            f"{len(duplicates)} image(s) were removed as duplicates of a kept one"
            + (f", and {len(merged)} kept image(s) stand for copies held by another source" if merged else "")
            + ". Every row, kept or not, is in `manifest.csv` with its reason (`duplicate_of`, `merged_with`)."]
    if kinds:
        text += ["", _table(["not kept, because", "images"], [[printable(kind), n] for kind, n in kinds.most_common()])]
    if duplicates:
        text += ["", "Removed duplicates (first 10):", *(
            f"- `{printable(row.get('source', ''))}/{printable(row.get('source_file', ''))}`: "
            + (f"same image as `{printable(row['duplicate_of'])}`" if row.get("duplicate_of")
               else printable(row.get("reason", "").removeprefix("duplicate: "))) for row in duplicates[:10])]
    return "\n".join(text)


def _license_text(kept: list[dict]) -> str:
    counts = Counter((row.get("source", ""), row["license"]) for row in kept)
    table = _table(["source", "licence as stated", "Hub id", "images"],
                   [[printable(source), printable(text), hub_license(text), n]
                    for (source, text), n in sorted(counts.items())])
    unstated = sum(n for (_, text), n in counts.items() if text == NOT_STATED)
    text = [
        "Licences are per image, as each source states them: Kermany et al. images are CC BY 4.0 (Mendeley Data "
        "V2); each Cohen collection image carries the licence in that collection's `metadata.csv` (several CC "
        "BY-NC-SA or CC BY-NC-ND, i.e. non-commercial; some none). The Kaggle CoronaHack CSV states no licence of "
        "its own per image, so its Cohen-derived images (COVID-19, SARS, ARDS, Streptococcus) take the Cohen "
        "licence when `hfxray data push --cohen-metadata` was given the collection's metadata.csv.", "", table]
    if unstated:
        text += ["", f"**Flagged, not excluded:** {unstated} image(s) have no licence stated by their source "
                     f"(`license` = `{NOT_STATED}`, Hub id `unknown`). Drop them before any reuse that needs a "
                     f"licence: `ds.filter(lambda row: row[\"license\"] != \"{NOT_STATED}\")`."]
    return "\n".join(text)


def dataset_card(rows: list[dict], kept: list[dict], splits: list[str], repo_id: str, size_category: str):
    """The DatasetCard of a prepared set: `rows` the whole manifest, `kept` its kept rows with a `license`."""
    from huggingface_hub import DatasetCard, DatasetCardData

    licenses = sorted({hub_license(row["license"]) for row in kept})
    sources = Counter(row.get("source", "") for row in kept)
    card_data = DatasetCardData(
        license=licenses[0] if len(licenses) == 1 else licenses,
        task_categories=["image-classification"],
        size_categories=[size_category],
        pretty_name="Chest X-rays, normal vs viral pneumonia, patient-level split",
        tags=TAGS,
        configs=[{"config_name": "default",
                  "data_files": [{"split": split, "path": SHARD.format(split=split)} for split in splits]}],
    )
    body = "\n\n".join([
        "# Chest X-rays: normal vs viral pneumonia, split by patient",
        "Binary `normal` / `virus` chest X-rays prepared with hfxray (`hfxray data prepare`) from "
        + ", ".join(f"{printable(name)} ({n} images)" for name, n in sources.most_common())
        + ". Bacterial pneumonia, other findings, lateral views and CT are excluded. For research and teaching; "
          "**not for clinical use**.",
        "## Loading",
        f'```python\nfrom datasets import load_dataset\n\nds = load_dataset("{repo_id}")\n```\n\n'
        f"hfxray trains on it as it is: `hfxray train --data-dir {repo_id} ...` (or the repo's local folder).",
        "## Columns",
        _table(["column", "meaning"], [[f"`{name}`", meaning] for name, meaning in COLUMNS]),
        "## Splits and counts",
        _counts(kept, splits),
        "## How patients were split",
        _split_text(kept),
        "## Duplicates and exclusions",
        _skipped_text(rows),
        "## Licences",
        _license_text(kept),
        "## Known biases and limitations",
        "\n".join([
            "- **Paediatric, single site.** The normal images and most viral ones are Kermany et al.'s: children "
            "aged 1-5 at one hospital in Guangzhou. Nothing here describes adults, other hospitals or scanners.",
            "- **Adult COVID-19 images from papers.** The COVID-19/SARS images of the `virus` class come from the "
            "Cohen collection: adults, several cropped from figures in papers (other resolution, borders, arrows, "
            "text). A classifier can separate them by age, source or image style rather than by disease; report "
            "results per `source`.",
            "- **Two classes.** Bacterial pneumonia and other findings are left out; a model trained here still "
            "answers `normal` or `virus` for them.",
            "- **Small.** Confidence intervals of test metrics are wide; resample by `patient_group`.",
        ]),
        "## Citations",
        "\n".join(f"- {citation}" for citation in CITATIONS),
    ])
    return DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}\n")

