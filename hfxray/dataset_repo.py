"""A prepared folder as a Hugging Face dataset repo (`hfxray data push`), and such a repo back as a prepared folder.

The repo holds what `datasets.load_dataset(REPO)` needs and what keeps a split honest:

    data/{split}-00000-of-00001.parquet   images embedded (their original bytes), `label` a ClassLabel
                                          [normal, virus], `patient_group`, `source`, `source_file`, `file`,
                                          `license` (as the source states it)
    README.md                             dataset card (huggingface_hub DatasetCard), `configs` naming the shards
    manifest.csv                          the prepared manifest, verbatim: every source row, kept or skipped, with
                                          its reason (duplicates merged, classes excluded)
    hfxray_dataset.json                   what the repo is (kind, repo id, counts): recognises the repo as hfxray's

Training reads such a repo (a local folder written with `--local`, or a Hub dataset id) through
`resolve_data_dir`: the shards are written back, byte for byte, into an ImageFolder with the repo's manifest under
the datasets cache, so the split, the patient groups and every later step are those of the prepared folder.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from collections import Counter
from pathlib import Path, PurePosixPath

from .data import CLASS_NAMES, MANIFEST_NAME, SPLITS, check_prepared, kept_counts, read_manifest
from .data.records import unsafe_name_reason
from .dataset_card import SHARD, cohen_licenses, dataset_card, row_license
from .env import hub_offline, hub_source, looks_local
from .errors import HfxrayError, excerpt, printable
from .logs import get_logger, library_progress_bars_off
from .outputs import MARKER_NAME, check_output_folder, new_sibling, swap_into_place, write_marker

logger = get_logger(__name__)

REPO_MARKER = "hfxray_dataset.json"
REPO_KIND = "hfxray dataset repo"
# In a prepared folder: the dataset repo it was pushed to (or, materialised, came from); the manifest's hash
# tells a record of an earlier preparation from one of this one.
RECORD_NAME = ".hfxray-dataset-repo.json"
MATERIALISED = "hfxray-dataset-repos"
ROWS_PER_GROUP = 100  # Parquet row groups of image data: the Hub's viewer reads one group at a time


class DatasetRepoError(HfxrayError):
    """A prepared folder cannot become a dataset repo, or a dataset repo cannot be read back."""


def check_repo_id(repo_id: str) -> str:
    """`owner/name` as huggingface_hub validates it, or one line saying what is wrong."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
        if repo_id.count("/") != 1:
            raise HFValidationError("it needs an owner: owner/name")
    except HFValidationError as err:
        raise DatasetRepoError(f"--repo-id {printable(repo_id)!r} is not a valid Hub repo id ({excerpt(err, 120)}). "
                               "To fix: pass owner/name, e.g. your-user/coronahack-normal-virus.") from None
    return repo_id


def _read_repo_marker(folder: Path) -> dict | None:
    try:
        content = json.loads((folder / REPO_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) and content.get("kind") == REPO_KIND else None


def is_dataset_repo(folder: str | os.PathLike) -> bool:
    """Whether `folder` is a dataset repo written by `hfxray data push` (its marker names it)."""
    return Path(folder).is_dir() and _read_repo_marker(Path(folder)) is not None


def _bad_file(file: str, split: str, label: str) -> bool:
    """Whether a manifest `file` is not the plain `split/label/name` that `hfxray data prepare` writes: a name
    read from a manifest or a downloaded repo is untrusted, and joined to a folder it could reach anywhere."""
    parts = PurePosixPath(file).parts
    return len(parts) != 3 or parts[:2] != (split, label) or bool(unsafe_name_reason(parts[2]))


def _features():
    from datasets import ClassLabel, Features, Image, Value

    return Features({"image": Image(), "label": ClassLabel(names=list(CLASS_NAMES)),
                     "patient_group": Value("string"), "source": Value("string"), "source_file": Value("string"),
                     "file": Value("string"), "license": Value("string")})


def _write_shard(data_dir: Path, rows: list[dict[str, str]], path: Path) -> None:
    """One split as Parquet, images embedded as their original bytes (datasets' `to_parquet` would store paths)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = _features()
    schema = features.arrow_schema
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, schema=schema) as writer:
        for start in range(0, len(rows), ROWS_PER_GROUP):
            batch = rows[start:start + ROWS_PER_GROUP]
            encoded = features.encode_batch({
                "image": [{"bytes": (data_dir / row["file"]).read_bytes(), "path": PurePosixPath(row["file"]).name}
                          for row in batch],
                "label": [row["label"] for row in batch],
                **{column: [row[column] for row in batch]
                   for column in ("patient_group", "source", "source_file", "file", "license")}})
            writer.write_table(pa.Table.from_pydict(encoded, schema=schema), row_group_size=ROWS_PER_GROUP)


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def write_repo(data_dir: str | os.PathLike, out: str | os.PathLike, repo_id: str,
               cohen_metadata: str | os.PathLike | None = None, published: bool = False) -> dict:
    """Write the dataset repo of prepared folder `data_dir` into the new folder `out`; returns its marker.

    `published`: the repo is being uploaded to `repo_id` (a `--local` copy only names the id it is meant for, so
    models trained from it do not cite a Hub dataset that may not exist)."""
    data_dir, out = Path(data_dir), Path(out)
    rows = read_manifest(data_dir)
    cohen = cohen_licenses(cohen_metadata)
    kept = [dict(row, license=row_license(row, cohen)) for row in rows if row.get("status") == "kept"]
    unsafe = [row["file"] for row in kept if _bad_file(row["file"], row["split"], row["label"])]
    if unsafe:
        raise DatasetRepoError(f"{printable(str(data_dir))}: the manifest names {len(unsafe)} kept image(s) outside "
                               f"their split/label folder (e.g. {printable(unsafe[0])!r}). To fix: re-run `hfxray data "
                               "prepare`.")
    missing = [row["file"] for row in kept
               if (data_dir / row["file"]).is_symlink() or not (data_dir / row["file"]).is_file()]
    if missing:
        raise DatasetRepoError(f"{printable(str(data_dir))}: {len(missing)} image(s) of the manifest are missing (e.g. "
                               f"{printable(missing[0])}). To fix: re-run `hfxray data prepare`.")
    splits = [split for split in SPLITS if any(row["split"] == split for row in kept)]
    for split in splits:
        _write_shard(data_dir, [row for row in kept if row["split"] == split], out / SHARD.format(split=split))
    shutil.copyfile(data_dir / MANIFEST_NAME, out / MANIFEST_NAME)
    counts = kept_counts(rows)
    marker = {"kind": REPO_KIND, "version": 1, "repo_id": repo_id, "published": published, "splits": splits,
              "counts": {split: dict(counts[split]) for split in splits},
              "licenses": dict(Counter(row["license"] for row in kept)),
              "manifest_sha256": hashlib.sha256((data_dir / MANIFEST_NAME).read_bytes()).hexdigest()}
    (out / REPO_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    dataset_card(rows, kept, splits, repo_id, _size_category(len(kept))).save(out / "README.md")
    return marker


def _check_local(local: Path, data_dir: Path) -> None:
    check_output_folder(local, "--local", [("the --data-dir", data_dir)])
    if local.is_dir() and any(local.iterdir()) and not is_dataset_repo(local):
        raise DatasetRepoError(f"--local {printable(str(local))} exists and is not a dataset repo written by `hfxray "
                               "data push` (no hfxray_dataset.json); it is left as it is. To fix: pass a new or "
                               "empty folder.")


def write_local(data_dir: str | os.PathLike, local: str | os.PathLike, repo_id: str,
                cohen_metadata: str | os.PathLike | None = None) -> dict:
    """The dataset repo written to folder `local`, whole: built beside it, then swapped in (an earlier repo written
    there by hfxray is replaced; any other non-empty folder is refused)."""
    data_dir, local = check_prepared(data_dir), Path(local)
    check_repo_id(repo_id)
    _check_local(local, data_dir)
    local.parent.mkdir(parents=True, exist_ok=True)
    staging = new_sibling(local, "partial")
    try:
        marker = write_repo(data_dir, staging, repo_id, cohen_metadata)
        retired = swap_into_place(staging, local)  # one atomic exchange where the system has it (hfxray.outputs)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    except OSError as err:
        raise DatasetRepoError(f"{printable(str(err.filename or local))}: {err.strerror or err}. To fix: check that "
                               "--local's folder is writable and has space.") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return marker


def _scrub(text: str, token: str) -> str:
    return excerpt(text, 200).replace(token, "***")


def push_dataset(data_dir: str | os.PathLike, repo_id: str, private: bool = False,
                 cohen_metadata: str | os.PathLike | None = None, token: str | None = None) -> dict:
    """Create (if needed) the Hub dataset repo `repo_id` and upload the repo of `data_dir`; the prepared folder
    then records the repo id, so that model cards of runs trained on it name the dataset."""
    import tempfile

    from huggingface_hub import HfApi, get_token

    data_dir = check_prepared(data_dir)
    check_repo_id(repo_id)
    if hub_offline():
        raise DatasetRepoError("the Hugging Face Hub is switched off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is "
                               "set). To fix: unset it on a machine with network access, or write the repo to a "
                               "folder with --local DIR.")
    token = token or get_token()
    if not token:
        raise DatasetRepoError("no Hugging Face token found for the upload. To fix: run `hf auth login` or set "
                               "HF_TOKEN to a token with write access, or write the repo to a folder with --local.")
    with tempfile.TemporaryDirectory(prefix="hfxray-dataset-") as scratch:
        folder = Path(scratch) / "repo"
        folder.mkdir()
        marker = write_repo(data_dir, folder, repo_id, cohen_metadata, published=True)
        api = HfApi()
        try:
            api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True, token=token)
            api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=folder, token=token,
                              commit_message=f"Upload {data_dir.name} with hfxray")
        except Exception as err:  # HfHubHTTPError and transport errors alike: one line, token masked
            status = getattr(getattr(err, "response", None), "status_code", None)
            hint = ("the token may lack write access to this namespace. To fix: use your own user or an organisation "
                    "you can write to" if status in (401, 403) else "To fix: check --repo-id and the network")
            raise DatasetRepoError(f"upload to the dataset repo {repo_id} failed ({type(err).__name__}: "
                                   f"{_scrub(str(err), token)}); {hint}.") from None
    write_record(data_dir, repo_id)
    return marker


def write_record(data_dir: Path, repo_id: str | None, origin: str | None = None, content: str | None = None) -> None:
    """Note in prepared folder `data_dir` the Hub dataset it is published as (None: none), and, for a folder read
    back from a dataset repo, where it came from and the repo content it holds."""
    manifest = hashlib.sha256((data_dir / MANIFEST_NAME).read_bytes()).hexdigest()
    (data_dir / RECORD_NAME).write_text(json.dumps({"repo_id": repo_id, "origin": origin, "content": content,
                                                    "manifest_sha256": manifest}) + "\n", encoding="utf-8")


def _content(folder: Path) -> str | None:
    """The repo content a read-back folder holds (its record is written last), or None."""
    try:
        record = json.loads((folder / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record.get("content") if isinstance(record, dict) and (folder / MARKER_NAME).is_file() else None


def dataset_repo_id(data_dir: str | os.PathLike | None) -> str | None:
    """The Hub dataset repo a prepared folder was pushed to or read from (its record), or None."""
    if not data_dir:
        return None
    folder = Path(data_dir)
    try:
        record = json.loads((folder / RECORD_NAME).read_text(encoding="utf-8"))
        manifest = hashlib.sha256((folder / MANIFEST_NAME).read_bytes()).hexdigest()
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("manifest_sha256") != manifest:
        return None  # recorded for an earlier preparation of this folder
    return record.get("repo_id") or None


# ---- reading a dataset repo back as a prepared folder ------------------------------------------------------------

def _unusable(where: str, what: str) -> DatasetRepoError:
    return DatasetRepoError(f"{printable(where)}: {what}. To fix: write the dataset repo again with `hfxray data "
                            "push`, or pass the prepared folder it was made from.")


def _materialise(dataset, manifest: bytes, repo_id: str | None, origin: str, root: Path) -> Path:
    """The ImageFolder of a loaded dataset repo under `root`; `repo_id` is the Hub dataset it is published as,
    recorded for model cards (None for an unpublished local copy).

    One folder per origin (a repo folder's absolute path, or a Hub id), rewritten when the repo's content changes
    (its manifest, or the shards' `datasets` fingerprints) and reused otherwise: processes that resolve the same
    repo at once (DDP ranks) each find, or build and then find, the same complete folder.
    """
    from datasets import Image

    target = root / hashlib.sha256(origin.encode()).hexdigest()[:24]
    content = hashlib.sha256(manifest + json.dumps(
        {"splits": {name: split._fingerprint for name, split in dataset.items()}, "repo_id": repo_id},
        sort_keys=True).encode()).hexdigest()
    if _content(target) == content:
        return target
    rows = list(csv.DictReader(io.StringIO(manifest.decode("utf-8"))))
    expected = {row["file"]: row for row in rows if row.get("status") == "kept"}
    root.mkdir(parents=True, exist_ok=True)
    staging = new_sibling(target, "partial")
    try:
        for split in SPLITS:
            for label in CLASS_NAMES:
                (staging / split / label).mkdir(parents=True)
        written = 0
        for split_name, split in dataset.items():
            names = split.features["label"].names
            if tuple(names) != CLASS_NAMES:
                raise _unusable(origin, f"labels {names}, expected {list(CLASS_NAMES)}")
            for batch in split.cast_column("image", Image(decode=False)).iter(batch_size=ROWS_PER_GROUP):
                for image, label, file in zip(batch["image"], batch["label"], batch["file"]):
                    row = expected.get(file)
                    if (row is None or row["split"] != split_name or row["label"] != names[label]
                            or _bad_file(file, split_name, names[label]) or not image.get("bytes")):
                        raise _unusable(origin, f"row {printable(file)!r} of {split_name} disagrees with the repo's "
                                                "manifest (split, label, name or image bytes)")
                    with (staging / file).open("xb") as handle:
                        handle.write(image["bytes"])
                    written += 1
        if written != len(expected):
            raise _unusable(origin, f"{len(expected) - written} kept image(s) of the manifest are not in the shards")
        (staging / MANIFEST_NAME).write_bytes(manifest)
        write_marker(staging, complete=True)
        write_record(staging, repo_id, origin, content)
        if _content(target) == content:  # another process finished first
            return target
        if target.exists():  # the copy of an earlier content: replaced whole
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(staging, target)
        except OSError:
            if _content(target) != content:  # not another process renaming the same content into place
                raise
    except FileExistsError:
        raise _unusable(origin, "two rows share one file name") from None
    except OSError as err:
        raise DatasetRepoError(f"{printable(str(root))}: cannot write the dataset's images ({err.strerror or err}). "
                               "To fix: free space there or choose another place with --cache_dir.") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("dataset repo %s: %d images written as a prepared folder in %s", origin, written, target)
    return target


def _load(source: str, origin: str):
    """(DatasetDict, manifest bytes, marker) of a dataset repo folder or Hub dataset id."""
    from datasets import load_dataset

    if looks_local(source):
        folder = Path(source)
        marker = _read_repo_marker(folder)
        manifest_path = folder / MANIFEST_NAME
    else:
        from huggingface_hub import hf_hub_download

        marker = json.loads(Path(hf_hub_download(source, REPO_MARKER, repo_type="dataset")).read_text("utf-8"))
        manifest_path = Path(hf_hub_download(source, MANIFEST_NAME, repo_type="dataset"))
    if not isinstance(marker, dict) or marker.get("kind") != REPO_KIND:
        raise _unusable(origin, f"not a dataset repo written by `hfxray data push` (no valid {REPO_MARKER})")
    with library_progress_bars_off():
        if looks_local(source):
            # datasets 5.2 caches a folder whose card lists `configs` under the folder's name alone: a second repo
            # folder of the same name (a --local written again, a copy) would be read from the first one's cache.
            # Naming the shards themselves keys the cache on their modification times.
            shards = {split: str(Path(source) / SHARD.format(split=split)) for split in SPLITS
                      if (Path(source) / SHARD.format(split=split)).is_file()}
            dataset = load_dataset("parquet", data_files=shards)
        else:
            dataset = load_dataset(source)
    return dataset, manifest_path.read_bytes(), marker


def _resolve(data_dir: str, cache_dir: str | None) -> str:
    if looks_local(data_dir) or "/" not in data_dir:  # a dataset id has an owner: a bare name is a folder
        if not is_dataset_repo(data_dir):
            return data_dir  # a prepared folder (or a mistake that check_prepared reports)
        source, from_hub = data_dir, False
        origin = str(Path(data_dir).resolve())
    else:
        source, unreachable = hub_source(data_dir)
        from_hub, origin = True, data_dir
        if source is None:
            raise DatasetRepoError(f"{printable(data_dir)}: not a local folder, and the Hub cannot be reached to load "
                                   f"it as a dataset repo ({unreachable}); no copy is cached. To fix: pass a "
                                   "prepared folder, a folder written by `hfxray data push --local`, or check the "
                                   "network.")
    try:
        dataset, manifest, marker = _load(source, data_dir)
    except HfxrayError:
        raise
    except Exception as err:  # repo missing, offline without a cached copy, damaged shards: one line
        raise DatasetRepoError(f"{printable(data_dir)}: neither a prepared folder nor a dataset repo that loads "
                               f"({type(err).__name__}: {excerpt(err, 160)}). To fix: pass a prepared folder, a "
                               "folder written by `hfxray data push --local`, or a Hub dataset id pushed with "
                               "`hfxray data push` (online).") from None
    if cache_dir is None:
        from datasets import config

        cache_dir = config.HF_DATASETS_CACHE
    published = from_hub or marker.get("published") is True
    return str(_materialise(dataset, manifest, marker.get("repo_id") if published else None, origin,
                            Path(cache_dir).expanduser() / MATERIALISED))


def resolve_data_dir(data_dir: str | os.PathLike | None, cache_dir: str | os.PathLike | None = None) -> str | None:
    """The prepared folder that `--data_dir` means: itself, or, for a dataset repo written by `hfxray data push`
    (a folder, or a Hub dataset id), its images written back as a prepared folder under `cache_dir` (default: the
    datasets cache). Anything else is returned as it is, for `check_prepared` to report."""
    if data_dir is None:
        return None
    return _resolve(os.fspath(data_dir), None if cache_dir is None else os.fspath(cache_dir))

