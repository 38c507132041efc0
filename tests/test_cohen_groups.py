"""hfxray.data.cohen_groups: Cohen collection images copied into CoronaHack keep their patient's group."""

from __future__ import annotations

import csv
import re
from collections import defaultdict

from hfxray.data.cohen_groups import TABLE, cohen_group
from hfxray.data import read_manifest
from hfxray.data.coronahack import patient_group


def test_one_patients_series_is_one_group():
    panels = [f"1-s2.0-S0929664620300449-gr2_lrg-{letter}.jpg" for letter in "abcd"]
    assert {cohen_group(name) for name in panels} == {"cohen-patient:19"}
    sars = ["SARS-10.1148rg.242035193-g04mr34g09a-Fig9a-day17.jpeg",
            "SARS-10.1148rg.242035193-g04mr34g09b-Fig9b-day19.jpeg",
            "SARS-10.1148rg.242035193-g04mr34g09c-Fig9c-day27.jpeg"]
    assert {cohen_group(name) for name in sars} == {"cohen-patient:10"}
    # another patient of the same paper stays apart
    assert cohen_group("SARS-10.1148rg.242035193-g04mr34g07b-Fig7b-day12.jpeg") == "cohen-patient:9"
    assert cohen_group("000001-27.jpg") == "cohen-patient:287+340"  # listed under two ids upstream: joined


def test_unlisted_figure_panels_group_by_figure_and_other_names_are_left_alone():
    assert cohen_group("new-paper-gr3_lrg-a.png") == cohen_group("new-paper-gr3_lrg-b2.png") == "figure:new-paper-gr3_lrg"
    assert cohen_group("new-paper-Fig4a-day3.jpeg") == cohen_group("new-paper-Fig4b-day9.jpeg")
    assert cohen_group("new-paper-Fig4a-day3.jpeg") != cohen_group("new-paper-Fig5a-day3.jpeg")
    assert cohen_group("F2DE909F-E19C-4900-92F5-8F435B031AC7.jpeg") is None
    # Kermany names keep their own rule; other names are their own group as before
    assert patient_group("person12_virus_3.jpeg") == "person12"
    assert patient_group("gr1_lrg-a.jpg") == patient_group("gr1_lrg-b.jpg") == "cohen-patient:69"
    assert patient_group("scan.png") == "file:scan.png"


def test_table_is_well_formed():
    with TABLE.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 746 and len({r["filename"] for r in rows}) == 746
    assert all(re.fullmatch(r"\d+[a-z]?(\+\d+[a-z]?)*", r["patientid"]) for r in rows)


def test_real_sample_cohen_images_are_grouped_by_patient(sample_dir, prepared_dir):
    """Every non-Kermany file of the sample is in the table, and no group spans two splits."""
    with open(sample_dir / "Chest_xray_Corona_Metadata.csv", newline="") as handle:
        names = [row["X_ray_image_name"] for row in csv.DictReader(handle)]
    cohen = [n for n in names if not re.match(r"(person\d+_|IM-|NORMAL2-IM-)", n)]
    assert len(cohen) == 31 and all(cohen_group(n).startswith("cohen-patient:") for n in cohen)
    splits = defaultdict(set)
    for row in read_manifest(prepared_dir):
        if row["status"] == "kept":
            splits[row["patient_group"]].add(row["split"])
    assert not [group for group, seen in splits.items() if len(seen) > 1]
    assert sum(1 for group in splits if group.startswith("cohen-patient:")) == 15
