"""Answers about the environment, each asked in one place: is the Hub offline, is a name a local folder or a Hub
id, where is the real sample.
"""

from __future__ import annotations

import os
from pathlib import Path

SAMPLE_ENV = "HFXRAY_SAMPLE_DIR"
SAMPLE_CSV = "Chest_xray_Corona_Metadata.csv"
COHEN_ENV = "HFXRAY_COHEN_DIR"
COHEN_NAME = "cohen-mini"  # the Cohen sample lies beside the CoronaHack sample
REPO_ROOT = Path(__file__).resolve().parent.parent


def hub_offline() -> bool:
    """True when huggingface_hub will not reach the Hub (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)."""
    from huggingface_hub import constants

    # huggingface_hub reads the variable once, at import; a later change of the environment counts too.
    return bool(constants.HF_HUB_OFFLINE) or _truthy("HF_HUB_OFFLINE") or _truthy("TRANSFORMERS_OFFLINE")


def _truthy(variable: str) -> bool:
    """huggingface_hub's reading of a boolean variable (1, ON, YES, TRUE in any case)."""
    return os.environ.get(variable, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def looks_local(name: str | os.PathLike) -> bool:
    """Whether `name` means a local folder rather than a Hub id (`owner/name` or `name`).

    A path that exists is local, and so is `a/b` when the folder `a` exists; so is anything written like a path
    (`./x`, `/x`, `~/x`, `a/b/c`, `x\\y`), since a Hub id has at most one slash and never starts with a dot or a
    slash.
    """
    text = os.fspath(name)
    path = Path(text).expanduser()
    if path.exists() or ("/" in text and path.parent.is_dir() and str(path.parent) != "."):
        return True  # `runs/nope` where `runs/` is a folder here: a typo of a run folder, not a Hub id
    return (text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text
            or (os.sep != "/" and os.sep in text))


def sample_dir() -> Path | None:
    """The real CoronaHack sample: $HFXRAY_SAMPLE_DIR, else `shared/data/coronahack-mini` beside the checkout."""
    configured = os.environ.get(SAMPLE_ENV)
    candidates = [Path(configured)] if configured else [REPO_ROOT.parent / "shared" / "data" / "coronahack-mini",
                                                        Path.cwd().parent / "shared" / "data" / "coronahack-mini"]
    return next((path for path in candidates if (path / SAMPLE_CSV).is_file()), None)


def expected_sample_dir() -> Path:
    """Where `sample_dir` looks first (for messages when the sample is missing)."""
    configured = os.environ.get(SAMPLE_ENV)
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "data" / "coronahack-mini"


def cohen_dir() -> Path | None:
    """The real Cohen sample: $HFXRAY_COHEN_DIR, else `cohen-mini` beside the CoronaHack sample."""
    configured = os.environ.get(COHEN_ENV)
    if configured:
        candidates = [Path(configured)]
    else:
        beside = sample_dir()
        candidates = ([beside.parent / COHEN_NAME] if beside else []) + [expected_sample_dir().parent / COHEN_NAME]
    return next((path for path in candidates if (path / "metadata.csv").is_file()), None)


def expected_cohen_dir() -> Path:
    """Where `cohen_dir` looks first (for messages when the sample is missing)."""
    configured = os.environ.get(COHEN_ENV)
    return Path(configured) if configured else (sample_dir() or expected_sample_dir()).parent / COHEN_NAME
