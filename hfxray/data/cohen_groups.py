"""Patient groups for images of the COVID-19 image data collection (Cohen et al.) that other sources copied.

Kaggle's CoronaHack set took its COVID-19, SARS, ARDS and Streptococcus images from that collection under their
original file names, without the patient ids; one patient's series (e.g. `1-s2.0-S0929664620300449-gr2_lrg-a` to
`-d`, or one SARS patient's figures on days 17, 19 and 27) would otherwise be one group per file and land in
several splits or folds. `cohen_group` names the patient from the collection's own `metadata.csv`:
`cohen_patients.csv` (beside this module) lists every file name of that file (746 names, at
ieee8023/covid-chestxray-dataset's state of June 2020, commit 584034a of the hida6 fork) with its `patientid`;
a name listed under two ids joins them (`285+339`), as the Cohen reader does. Licence: the mapping is derived from
`metadata.csv`, which its authors release under CC BY-NC-SA 4.0; the CSV keeps that licence and attribution
(`cohen_patients.md`), apart from the Apache-2.0 code.

A name the table does not list but that looks like a panel of a paper figure (a trailing `-a`, `-b2`, `-day5`,
`Fig9a`) is grouped by the figure: the panels of one figure stay together even when they show different patients
(the safe side for a split). Anything else gets None: the caller keeps its own rule.
"""

from __future__ import annotations

import csv
import functools
import re
from pathlib import Path

TABLE = Path(__file__).with_name("cohen_patients.csv")
# Trailing panel or day suffixes of a figure's file name: "-a", "_b2", "-day17"; then a letter after "Fig9".
_SUFFIX = re.compile(r"(?:[-_](?:[a-h]\d?|day\d+))+$", re.IGNORECASE)
_FIGURE_LETTER = re.compile(r"((?:fig|f)\d+)[a-h]$", re.IGNORECASE)


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, str]:
    with TABLE.open(newline="") as handle:
        return {row["filename"]: row["patientid"] for row in csv.DictReader(handle)}


def cohen_group(file_name: str) -> str | None:
    """`cohen-patient:<id>` for a file the collection lists, `figure:<stem>` for a figure panel, else None."""
    if patient := _table().get(file_name):
        return f"cohen-patient:{patient}"
    stem = Path(file_name).stem
    figure = _FIGURE_LETTER.sub(r"\1", _SUFFIX.sub("", stem))
    if figure != stem and figure:
        return f"figure:{figure}"
    return None
