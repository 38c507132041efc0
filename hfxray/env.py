"""Answers about the environment, each asked in one place: is the Hub offline, is a name a local folder or a Hub
id, where is the real sample.
"""

from __future__ import annotations

import functools
import os
import socket
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
    return bool(constants.HF_HUB_OFFLINE) or env_flag("HF_HUB_OFFLINE") or env_flag("TRANSFORMERS_OFFLINE")


HUB_CONNECT_TIMEOUT = 5.0  # seconds for the one connection that tells whether the Hub can be reached


@functools.lru_cache(maxsize=None)
def hub_unreachable() -> str:
    """Why the Hub endpoint cannot be reached ("" when it can, or when that cannot be told here: behind a proxy,
    or an endpoint that is not a plain URL, which huggingface_hub then reports itself).

    Without a network huggingface_hub 2.4 retries each request five times with back-off, about 25 s and ten
    warning lines before the error; one TCP connection to the endpoint tells the same in a moment. Asked once per
    process.
    """
    from urllib.parse import urlsplit
    from urllib.request import getproxies

    from huggingface_hub import constants

    if getproxies():  # the variables, and the system's settings on Windows and macOS, as httpx reads them
        return ""  # the proxy, not this machine, reaches the Hub
    endpoint = urlsplit(constants.ENDPOINT)
    try:
        host, port = endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)
    except ValueError:  # a port that is not a number, or out of range
        return ""
    if not host:
        return ""
    try:
        socket.create_connection((host, port), timeout=HUB_CONNECT_TIMEOUT).close()
    except OSError as err:
        return f"{host}:{port}: {getattr(err, 'strerror', None) or err}"
    return ""


def hub_source(repo_id: str) -> tuple[str | None, str]:
    """Where a Hub id loads from, and why: (repo_id, "") when the Hub answers, or when huggingface_hub is offline
    and reads its cache itself; when the Hub cannot be reached, (the cached copy's folder, or None, the reason)."""
    if hub_offline():
        return repo_id, ""
    unreachable = hub_unreachable()
    if not unreachable:
        return repo_id, ""
    return cached_snapshot(repo_id), unreachable


def cached_snapshot(repo_id: str) -> str | None:
    """The folder of the local Hugging Face cache's copy of a Hub repo (its main revision), or None."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not cached, or not a valid repo id: either way there is no local copy
        return None


def env_flag(variable: str) -> bool:
    """huggingface_hub's reading of a boolean variable (1, ON, YES, TRUE in any case)."""
    return os.environ.get(variable, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def launched_processes() -> int:
    """How many processes the launcher (accelerate, torchrun) says it started (1 without one)."""
    return max(int(os.environ.get(name, "1") or 1) for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"))


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
