"""A persistent, memory-mapped cache of decoded images, shared by runs, cross-validation folds and processes.

Each split of a prepared folder is decoded and resized (shortest edge, as the processor does) once with
`datasets.Dataset.map` (batched, optionally over `num_proc` processes) into Arrow files: one row per image with
its uint8 pixels as a flat list plus channels, height and width. Later runs with the same prepared set and the
same resize memory-map those files instead of decoding: an image is a zero-copy view into the mapped file, so a
process holds only the pages it touches, and the operating system shares them between processes (DDP ranks).

Where: `{cache_dir or HF_DATASETS_CACHE}/hfxray-decoded/{split}-{resize}px-{fingerprint}/`. The fingerprint
covers the split's files as `datasets` sees them (paths and modification times), the prepared folder's
manifest, the split name, the resize and the decoder's library versions: changing any of them decodes anew.
A cache entry appears whole or not at all (built in a hidden folder, then renamed into place), so concurrent
runs never read a half-written entry; `hfxray data cache` lists and frees entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from pathlib import Path

from .errors import HfxrayError, printable
from .logs import get_logger

logger = get_logger(__name__)

CACHE_FOLDER = "hfxray-decoded"
INFO_NAME = "hfxray-cache.json"
INFO_KIND = "hfxray decoded-image cache"
# Bump when the stored layout or the decoding changes: older entries are then ignored (and can be cleared).
CACHE_VERSION = 1
ROWS_PER_BATCH = 100  # rows per map batch and per Arrow record batch: bounds the memory of a build


class CacheError(HfxrayError):
    """The decode cache cannot be written or read."""


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`{cache_dir}/hfxray-decoded`, with `cache_dir` defaulting to `datasets`' cache (`HF_DATASETS_CACHE`)."""
    if cache_dir is None:
        from datasets import config

        cache_dir = config.HF_DATASETS_CACHE
    return Path(cache_dir).expanduser() / CACHE_FOLDER


def fingerprint(split, split_name: str, data_dir: str | os.PathLike, resize: int) -> str:
    """Hash of what the decoded images depend on: the split's files, the manifest, the resize, the decoders."""
    import PIL
    import torch
    import torchvision

    from .data import MANIFEST_NAME

    manifest = hashlib.sha256((Path(data_dir) / MANIFEST_NAME).read_bytes()).hexdigest()
    parts = [CACHE_VERSION, split_name, split._fingerprint, len(split), manifest, int(resize), PIL.__version__,
             torch.__version__, torchvision.__version__]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _decode_batch(batch: dict, resize: int, threads: int):
    """Map function: {"image": [{"path", "bytes"}], "label": [...]} -> an Arrow table of decoded, resized images."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import pyarrow as pa
    from datasets import Image

    from . import transforms

    feature = Image()

    def decode(value):
        # The same decoding as indexing the split (datasets' Image feature), then the processor's resize.
        return transforms.decode_resized(feature.decode_example(value), resize).numpy()

    if threads > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            images = list(pool.map(decode, batch["image"]))
    else:
        images = [decode(value) for value in batch["image"]]
    sizes = np.array([0] + [image.size for image in images], dtype=np.int64)
    values = np.concatenate([image.reshape(-1) for image in images]) if images else np.zeros(0, np.uint8)
    return pa.table({
        "pixels": pa.LargeListArray.from_arrays(pa.array(np.cumsum(sizes)), pa.array(values)),
        "channels": pa.array([image.shape[0] for image in images], pa.uint8()),
        "height": pa.array([image.shape[1] for image in images], pa.int32()),
        "width": pa.array([image.shape[2] for image in images], pa.int32()),
        "label": pa.array(batch["label"], pa.int64()),
    })


def _features(label_feature):
    from datasets import Features, LargeList, Value

    return Features({"pixels": LargeList(Value("uint8")), "channels": Value("uint8"), "height": Value("int32"),
                     "width": Value("int32"), "label": label_feature})


def _read_info(entry: Path) -> dict | None:
    try:
        info = json.loads((entry / INFO_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("kind") != INFO_KIND or info.get("version") != CACHE_VERSION:
        return None
    if not all((entry / name).is_file() for name in info.get("files", [])):
        return None
    return info


def _auto_processes(rows: int, cores: int) -> int | None:
    """Processes for a build: one per core (at most 8) once there are enough images to pay for starting them."""
    processes = min(8, cores, rows // 1000)
    return processes if processes > 1 else None


def decoded_split(split, split_name: str, data_dir: str | os.PathLike, resize: int,
                  cache_dir: str | os.PathLike | None = None, num_proc: int | None = None) -> "DecodedImages":
    """The split's images decoded at `resize`, from the cache (built first when missing).

    `split` is the whole split as `load_imagefolder` returns it (select rows afterwards with
    `DecodedImages.select`, so that every subset and fold shares one entry). Builds use `num_proc` processes
    (default: one per core, at most 8, for splits of a few thousand images and more), each decoding on the
    remaining cores' threads.
    """
    from datasets import Image

    from .transforms import available_cores

    root = cache_root(cache_dir)
    key = fingerprint(split, split_name, data_dir, resize)
    entry = root / f"{split_name}-{int(resize)}px-{key}"
    info = _read_info(entry)
    if info is not None:
        logger.info("decoded %s images: %d from the cache %s", split_name, info["rows"], entry)
        return DecodedImages([str(entry / name) for name in info["files"]])

    cores = available_cores()
    num_proc = num_proc if num_proc is not None else _auto_processes(len(split), cores)
    threads = max(1, min(8, cores // (num_proc or 1)))
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = root / f".{entry.name}.building-{os.getpid()}-{secrets.token_hex(4)}"
        staging.mkdir()
    except OSError as err:
        raise CacheError(f"{printable(str(root))}: cannot write the decode cache ({err.strerror or err}). To fix: "
                         "make it writable or choose another place with --cache_dir (or HF_DATASETS_CACHE).") from None
    try:
        start = time.perf_counter()
        source = split.cast_column("image", Image(decode=False))
        decoded = source.map(
            _decode_batch, batched=True, batch_size=ROWS_PER_BATCH, writer_batch_size=ROWS_PER_BATCH,
            fn_kwargs={"resize": int(resize), "threads": threads}, remove_columns=source.column_names,
            features=_features(split.features["label"]), num_proc=num_proc,
            cache_file_name=str(staging / "decoded.arrow"), new_fingerprint=key,
            desc=f"decoding {split_name} into the cache")
        files = [Path(f["filename"]).name for f in decoded.cache_files]
        size = sum((staging / name).stat().st_size for name in files)
        del decoded
        (staging / INFO_NAME).write_text(json.dumps({
            "kind": INFO_KIND, "version": CACHE_VERSION, "data_dir": str(Path(data_dir).resolve()),
            "split": split_name, "resize": int(resize), "rows": len(split), "bytes": size, "files": files,
            "fingerprint": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.perf_counter() - start, 2)}, indent=2))
        if entry.exists() and _read_info(entry) is None:  # damaged (a file deleted by hand): replaced whole
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.rename(staging, entry)
        except OSError:
            if _read_info(entry) is None:  # not another process finishing the same entry first
                raise
    except OSError as err:
        raise CacheError(f"{printable(str(root))}: cannot write the decode cache ({err.strerror or err}). To fix: "
                         "free space there or choose another place with --cache_dir (or HF_DATASETS_CACHE).") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    info = _read_info(entry)
    logger.info("decoded %s images: %d into the cache %s (%.1f MiB)", split_name, info["rows"], entry,
                info["bytes"] / 2**20)
    return DecodedImages([str(entry / name) for name in info["files"]])


class DecodedImages:
    """Images of one cache entry: `images[i]` is a uint8 [C, H, W] tensor viewing the memory-mapped file.

    Row lookup is two small integer arrays (Arrow chunk, start offset); no pixels are copied until a crop is
    stacked. `labels` holds the rows' labels; `select(indices)` makes a subset (a fold, the first N images)
    that shares the mapping. Pickles as file names, so DataLoader workers map the files themselves.
    """

    def __init__(self, files: list[str], indices=None, _arrays=None):
        import numpy as np

        self.files = list(files)
        if _arrays is None:
            _arrays = self._map(self.files)
        self.dataset, self._values, self._chunk, self._start, self._shape, self._labels = _arrays
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        rows = self._labels if self.indices is None else self._labels[self.indices]
        self.labels = rows.tolist()

    @staticmethod
    def _map(files: list[str]):
        import warnings

        import numpy as np
        import torch
        from datasets import Dataset, concatenate_datasets

        parts = [Dataset.from_file(name, in_memory=False) for name in files]
        dataset = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
        table = dataset.data.table
        values, chunk_of_row, start_of_row = [], [], []
        for number, chunk in enumerate(table.column("pixels").chunks):
            offsets = np.asarray(chunk.offsets)  # absolute positions into the chunk's values
            values.append(np.asarray(chunk.values))  # zero-copy view of the mapped file
            chunk_of_row.append(np.full(len(chunk), number, dtype=np.int32))
            start_of_row.append(offsets[:-1])
        shape = np.stack([np.asarray(table.column(name)).astype(np.int64)
                          for name in ("channels", "height", "width")], axis=1)
        labels = np.asarray(table.column("label"))
        with warnings.catch_warnings():
            # Views of the mapped file are read-only (crops are copied before anything writes); torch warns
            # once per process about wrapping a read-only array: take that warning here, silenced.
            warnings.simplefilter("ignore", UserWarning)
            torch.from_numpy(np.frombuffer(b"\0", dtype=np.uint8))
        empty = np.zeros(0, np.int64)
        return (dataset, values, np.concatenate(chunk_of_row) if chunk_of_row else empty.astype(np.int32),
                np.concatenate(start_of_row) if start_of_row else empty, shape, labels)

    def __len__(self) -> int:
        return len(self._labels) if self.indices is None else len(self.indices)

    def __getitem__(self, index: int):
        import torch

        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"image {index} of {len(self)}")
        row = index if self.indices is None else int(self.indices[index])
        channels, height, width = self._shape[row]
        start = self._start[row]
        pixels = self._values[self._chunk[row]][start:start + channels * height * width]
        return torch.from_numpy(pixels.reshape(channels, height, width))

    def select(self, indices) -> "DecodedImages":
        """The subset at `indices` (positions in this object), sharing the memory mapping."""
        import numpy as np

        indices = np.asarray(indices, dtype=np.int64)
        rows = indices if self.indices is None else self.indices[indices]
        return DecodedImages(self.files, rows, _arrays=(self.dataset, self._values, self._chunk, self._start,
                                                        self._shape, self._labels))

    def __reduce__(self):
        return DecodedImages, (self.files, self.indices)


def list_entries(cache_dir: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None
                 ) -> list[tuple[Path, dict]]:
    """(folder, info) of each complete cache entry, optionally only those of one prepared folder."""
    root = cache_root(cache_dir)
    wanted = str(Path(data_dir).resolve()) if data_dir is not None else None
    entries = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        info = _read_info(folder) if folder.is_dir() and not folder.name.startswith(".") else None
        if info is not None and (wanted is None or info.get("data_dir") == wanted):
            entries.append((folder, info))
    return entries


def _stale_builds(root: Path) -> list[Path]:
    """Hidden build folders whose process is gone (a build that was killed)."""
    stale = []
    for folder in root.glob(".*.building-*") if root.is_dir() else []:
        pid = folder.name.rsplit(".building-", 1)[1].split("-")[0]
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            stale.append(folder)
        except PermissionError:
            pass
    return stale


def describe(cache_dir: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
             clear: bool = False, echo=print) -> int:
    """Print the cache entries (of one prepared folder, or all); with `clear`, delete them. Returns bytes freed."""
    root = cache_root(cache_dir)
    entries = list_entries(cache_dir, data_dir)
    total = sum(info["bytes"] for _, info in entries)
    echo(f"decode cache: {printable(str(root))}")
    for folder, info in entries:
        echo(f"  {info['split']:<10} {info['resize']:>5} px {info['rows']:>8} images {info['bytes'] / 2**20:>9.1f} MiB"
             f"  {printable(info['data_dir'])}  ({folder.name})")
    echo(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {total / 2**20:.1f} MiB")
    if not clear:
        return 0
    freed = 0
    stale = _stale_builds(root) if data_dir is None else []
    for folder in [folder for folder, _ in entries] + stale:
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        try:
            shutil.rmtree(folder)
        except OSError as err:
            raise CacheError(f"{printable(str(folder))}: cannot delete ({err.strerror or err}). To fix: check the "
                             "permissions of the cache folder.") from None
        freed += size
    echo(f"cleared {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
         f"{f' and {len(stale)} unfinished build(s)' if stale else ''}: {freed / 2**20:.1f} MiB freed")
    return freed
