"""A persistent decode cache shared by runs, cross-validation folds and processes.

Each split of a prepared folder is decoded and resized (as the processor does: the shortest edge, or to a fixed
height x width for `resize_mode: square`) once with `datasets.Dataset.map` (batched, optionally over `num_proc`
processes) into Arrow files: one row per image with its uint8 pixels as a flat list plus channels, height, width,
label and the image's path in the prepared folder. Later runs with the same prepared set and the same resize read
those files instead of decoding.

How they are read: the row index (where each image's bytes lie in the file, its shape and label) is taken once
through a memory map, which is then closed; an image is then one positioned read (`os.preadv`) into a new
tensor. Pages of a memory map that a process has touched count in its resident memory for as long as it is
mapped, so reading a whole epoch through a map would grow every process by the cache's size; positioned reads go
through the operating system's page cache, which all processes (DDP ranks, folds, later runs) share, and leave a
process holding only the images of the batch it is building.

Where: `{cache_dir or HF_DATASETS_CACHE}/hfxray-decoded/{split}-{resize}px-{fingerprint}/` (`{height}x{width}px`
for a fixed-size resize). The fingerprint covers the split's files (relative path, size and modification time of
each, as `datasets` fingerprints data files), the prepared folder's manifest, the split name, the resize (its kind
too: a square entry is never read for a shortest-edge run) and the decoder's library versions: changing any of them
decodes anew. Finding an entry needs only that listing, not `load_dataset`, so a run with a warm cache starts
without listing the split through `datasets`. A cache entry appears whole or not at all (built in a hidden folder,
then renamed into place), so concurrent runs never read a half-written entry; `hfxray data cache` lists and frees
entries.

Integrity: the entry's info file records a CRC-32 of each Arrow file, checked every time a run opens the entry
(`VERIFY`); a file whose bytes changed since (a bad disk, a copy cut short, a hand edit) is never read: the entry is
rebuilt, with a warning. CRC-32 catches accidental damage at about twice the speed of SHA-256 here; it is no defence
against someone who can write to the cache, who could rewrite the info file as well. The cost is one sequential
read of the entry per open, which also warms the page cache for the reads that follow
(`benchmarks/decode_cache.py --checksum-only` measures it).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
import zlib
from pathlib import Path

from .errors import HfxrayError, excerpt, printable
from .logs import get_logger

logger = get_logger(__name__)

CACHE_FOLDER = "hfxray-decoded"
INFO_NAME = "hfxray-cache.json"
INFO_KIND = "hfxray decoded-image cache"
# Bump when the stored layout or the decoding changes: older entries are then ignored (and can be cleared).
CACHE_VERSION = 3  # 3: a CRC-32 per Arrow file
VERIFY = True  # check each file's CRC-32 before an entry is used (the benchmark turns it off to measure its cost)
CHECKSUM_CHUNK = 8 << 20
REBUILD = "To fix: run `hfxray data cache --clear` (the cache is rebuilt on the next run)."
ROWS_PER_BATCH = 100  # rows per map batch and per Arrow record batch: bounds the memory of a build


class CacheError(HfxrayError):
    """The decode cache cannot be written or read."""


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`{cache_dir}/hfxray-decoded`, with `cache_dir` defaulting to `datasets`' cache (`HF_DATASETS_CACHE`)."""
    if cache_dir is None:
        from datasets import config

        cache_dir = config.HF_DATASETS_CACHE
    return Path(cache_dir).expanduser() / CACHE_FOLDER


def check_cache_folder(folder: Path, what: str) -> None:
    """Refuse, in one line, a cache location that is a file, lies under a file, or cannot be created or written
    (from --cache_dir or HF_DATASETS_CACHE alike), before `datasets` or a build fails on it with a traceback."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as err:
        raise CacheError(f"{printable(str(folder))}: unusable as {what} ({err.strerror or type(err).__name__}). "
                         "To fix: point --cache_dir (or HF_DATASETS_CACHE) at a folder you can write, or create "
                         "it.") from None


def split_listing(data_dir: str | os.PathLike, split_name: str) -> list[tuple[str, int, int]]:
    """(path relative to the split folder, size, modification time in ns) of every file under it, sorted."""
    root = Path(data_dir) / split_name
    listing = []
    for folder, _, names in os.walk(root, followlinks=True):
        for name in names:
            path = os.path.join(folder, name)
            try:
                stat = os.stat(path)
            except OSError:  # a broken link: listed as such, so that mending it changes the fingerprint
                listing.append((os.path.relpath(path, root), -1, -1))
                continue
            listing.append((os.path.relpath(path, root), stat.st_size, stat.st_mtime_ns))
    return sorted(listing)


def resize_json(resize: int | tuple[int, int] | list[int]):
    """`transforms.Geometry.resize` as stored: an int (shortest edge) or [height, width] (a fixed size)."""
    return [int(resize[0]), int(resize[1])] if isinstance(resize, (tuple, list)) else int(resize)


def resize_name(resize: int | tuple[int, int] | list[int]) -> str:
    """`72px` (shortest edge) or `72x72px` (fixed size), as in entry names."""
    value = resize_json(resize)
    return f"{value}px" if isinstance(value, int) else f"{value[0]}x{value[1]}px"


def fingerprint(data_dir: str | os.PathLike, split_name: str, resize: int | tuple[int, int]) -> str:
    """Hash of what the decoded images depend on: the split's files, the manifest, the resize, the decoders."""
    import PIL
    import torch
    import torchvision

    from .data import MANIFEST_NAME

    manifest = hashlib.sha256((Path(data_dir) / MANIFEST_NAME).read_bytes()).hexdigest()
    files = hashlib.sha256(json.dumps(split_listing(data_dir, split_name)).encode()).hexdigest()
    parts = [CACHE_VERSION, split_name, files, manifest, resize_json(resize), PIL.__version__, torch.__version__,
             torchvision.__version__]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _decode_batch(batch: dict, resize: int | list[int], threads: int, root: str, folder: str):
    """Map function: {"image": [{"path", "bytes"}], "label": [...]} -> an Arrow table of decoded, resized images."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import pyarrow as pa
    from datasets import Image

    from . import transforms

    feature = Image()

    def decode(value):
        # The same decoding as indexing the split (datasets' Image feature), then the processor's resize.
        try:
            return transforms.decode_resized(feature.decode_example(value), resize_json(resize)).numpy()
        except (OSError, ValueError, SyntaxError) as err:  # PIL: unreadable, truncated or vanished image
            raise CacheError(f"{printable(str(value.get('path')))}: cannot decode it for the cache "
                             f"({type(err).__name__}: {excerpt(printable(str(err)))}). To fix: re-run "
                             "`hfxray data prepare` "
                             "(the prepared image changed or was removed since).") from None

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
        "file": pa.array([_relative(value["path"], root, folder) for value in batch["image"]], pa.string()),
    })


def _relative(path: str, root: str, folder: str) -> str:
    """An image's path inside the prepared folder, as the manifest writes it (`train/virus/x.jpeg`); `root` is the
    folder resolved, `folder` as given (absolute)."""
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:  # a link leading out of the folder: named by where it sits
        return Path(os.path.relpath(os.path.abspath(path), folder)).as_posix()


def _features(label_feature):
    from datasets import Features, LargeList, Value

    return Features({"pixels": LargeList(Value("uint8")), "channels": Value("uint8"), "height": Value("int32"),
                     "width": Value("int32"), "label": label_feature, "file": Value("string")})


def _read_info(entry: Path) -> dict | None:
    try:
        info = json.loads((entry / INFO_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("kind") != INFO_KIND or info.get("version") != CACHE_VERSION:
        return None
    files, sums = info.get("files"), info.get("crc32")
    if not isinstance(files, list) or not isinstance(sums, dict) or set(map(str, files)) != set(sums):
        return None
    if not all((entry / name).is_file() for name in files):
        return None
    return info


def file_checksum(path: str | os.PathLike) -> str:
    """CRC-32 of a file's bytes, as 8 hex digits (read in large chunks into one reused buffer)."""
    crc, buffer = 0, bytearray(CHECKSUM_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            crc = zlib.crc32(view[:count], crc)
    return f"{crc:08x}"


def damaged_files(entry: Path, info: dict) -> list[str]:
    """The entry's files whose bytes differ from the checksums recorded when it was built (or that cannot be read)."""
    damaged = []
    for name in info["files"]:
        try:
            same = file_checksum(entry / name) == info["crc32"][name]
        except OSError:
            same = False
        if not same:
            damaged.append(name)
    return damaged


def _auto_processes(rows: int, cores: int) -> int | None:
    """Processes for a build: one per core (at most 8) once there are enough images to pay for starting them."""
    processes = min(8, cores, rows // 1000)
    return processes if processes > 1 else None


def decoded_split(data_dir: str | os.PathLike, split_name: str, resize: int | tuple[int, int],
                  cache_dir: str | os.PathLike | None = None, num_proc: int | None = None,
                  split=None) -> "DecodedImages":
    """The split's images decoded at `resize` (`transforms.Geometry.resize`), from the cache (built first when
    missing).

    `split` is the whole split as `load_imagefolder` returns it, when the caller has it; it is only needed to
    build a missing entry (loaded here otherwise). Select rows afterwards with `DecodedImages.select`, so that
    every subset and fold shares one entry. Builds use `num_proc` processes (default: one per core, at most 8,
    for splits of a few thousand images and more), each decoding on the remaining cores' threads.
    """
    from datasets import Image

    from .transforms import available_cores

    root = cache_root(cache_dir)
    check_cache_folder(root, "the decode cache")
    key = fingerprint(data_dir, split_name, resize)
    entry = root / f"{split_name}-{resize_name(resize)}-{key}"
    info = _read_info(entry)
    damaged = info is not None and VERIFY and damaged_files(entry, info)
    if damaged:
        logger.warning("decode cache %s: %s changed since it was written (checksum mismatch); not used, rebuilding "
                       "the entry", printable(str(entry)), ", ".join(damaged))
    elif info is not None:
        logger.info("decoded %s images: %d from the cache %s", split_name, info["rows"], entry)
        return DecodedImages([str(entry / name) for name in info["files"]])

    if split is None:
        from datasets import config

        from .data import load_imagefolder

        check_cache_folder(Path(config.HF_DATASETS_CACHE), "the datasets cache (HF_DATASETS_CACHE)")
        split = load_imagefolder(data_dir)[split_name]
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
            fn_kwargs={"resize": resize_json(resize), "threads": threads, "root": str(Path(data_dir).resolve()),
                       "folder": os.path.abspath(data_dir)},
            remove_columns=source.column_names, features=_features(split.features["label"]), num_proc=num_proc,
            cache_file_name=str(staging / "decoded.arrow"), new_fingerprint=key,
            desc=f"decoding {split_name} into the cache")
        files = [Path(f["filename"]).name for f in decoded.cache_files]
        size = sum((staging / name).stat().st_size for name in files)
        del decoded
        (staging / INFO_NAME).write_text(json.dumps({
            "kind": INFO_KIND, "version": CACHE_VERSION, "data_dir": str(Path(data_dir).resolve()),
            "split": split_name, "resize": resize_json(resize), "rows": len(split), "bytes": size, "files": files,
            "crc32": {name: file_checksum(staging / name) for name in files},
            "fingerprint": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.perf_counter() - start, 2)}, indent=2))
        if entry.exists() and (damaged or _read_info(entry) is None):  # damaged (a file changed or deleted by
            shutil.rmtree(entry, ignore_errors=True)  # hand): replaced whole; open descriptors still read the old
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
    if info is None:
        raise CacheError(f"{printable(str(entry))}: the entry was removed while this run built it (another run "
                         "replacing a damaged entry, or `hfxray data cache --clear`). To fix: run again.")
    logger.info("decoded %s images: %d into the cache %s (%.1f MiB)", split_name, info["rows"], entry,
                info["bytes"] / 2**20)
    return DecodedImages([str(entry / name) for name in info["files"]])


def _read_into(fd: int, target, offset: int) -> int:
    """Fill the writable buffer `target` from `fd` at `offset`; returns the bytes read (fewer only at the end)."""
    view = memoryview(target).cast("B")
    done = 0
    while done < len(view):
        if hasattr(os, "preadv"):
            count = os.preadv(fd, [view[done:]], offset + done)
        else:  # no preadv on this platform: read, then copy
            data = os.pread(fd, len(view) - done, offset + done)
            view[done:done + len(data)] = data
            count = len(data)
        if count == 0:
            break
        done += count
    return done


def pooled_split(data_dir: str | os.PathLike, resize: int | tuple[int, int],
                 cache_dir: str | os.PathLike | None = None, counts: dict | None = None, guard=None) -> "DecodedImages":
    """Train + validation (`POOL_SPLITS`, those with images) one after another: the rows cross-validation folds
    and the refit select from. `counts` is `check_classes`'s answer when the caller has it; `guard(name)` is a
    context around each split's lookup (DDP: `main_process_first`, so that rank 0 builds a missing entry)."""
    import contextlib

    from .data import POOL_SPLITS, check_classes

    counts = counts if counts is not None else check_classes(data_dir)
    parts = []
    for name in POOL_SPLITS:
        if sum(counts[name].values()):
            with (guard(name) if guard is not None else contextlib.nullcontext()):
                parts.append(decoded_split(data_dir, name, resize, cache_dir=cache_dir))
    return DecodedImages.concatenate(parts)


class _RowIndex:
    """Where each row's pixels lie in an entry's Arrow files, with its shape, label and image path.

    Read once through a memory map that is closed again; pixels are then read with positioned reads on file
    descriptors opened per process (a forked DataLoader worker or DDP rank opens its own).
    """

    def __init__(self, files: list[str]):
        import numpy as np

        parts = [self._read(number, name) for number, name in enumerate(files)]
        self.files = list(files)
        self.file = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int32)
        self.offset = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
        self.shape = np.concatenate([p[2] for p in parts]) if parts else np.zeros((0, 3), np.int64)
        self.labels = np.concatenate([p[3] for p in parts]) if parts else np.zeros(0, np.int64)
        self.names = [name for p in parts for name in p[4]]
        self._fds: dict[int, int] = {}
        for number, name in enumerate(files):
            self._check(number, name, parts[number])

    @staticmethod
    def _read(number: int, name: str):
        import numpy as np
        import pyarrow as pa

        try:
            with pa.memory_map(name) as source:
                base = source.read_buffer(1).address  # zero-copy: the address of the map's first byte
                source.seek(0)
                table = pa.ipc.open_stream(source).read_all()
                offsets = [np.asarray(chunk.values).ctypes.data - base + np.asarray(chunk.offsets)[:-1]
                           for chunk in table.column("pixels").chunks]
                # The first row's first bytes as mapped, to check the positioned reads against.
                chunks = [chunk for chunk in table.column("pixels").chunks if len(chunk)]
                probe = bytes(np.asarray(chunks[0].values)[np.asarray(chunks[0].offsets)[0]:][:64]) if chunks else b""
                columns = [np.asarray(table.column(c)).astype(np.int64) for c in ("channels", "height", "width")]
                shape = np.stack(columns, axis=1) if table.num_rows else np.zeros((0, 3), np.int64)
                labels = np.asarray(table.column("label")).astype(np.int64)
                names = table.column("file").to_pylist()
                rows = table.num_rows
                del table, chunks
        except (OSError, pa.ArrowException, KeyError) as err:
            raise CacheError(f"{printable(name)}: not a readable decode-cache file ({printable(str(err))}). "
                             + REBUILD) from None
        offset = np.concatenate(offsets) if offsets else np.zeros(0, np.int64)
        return np.full(rows, number, dtype=np.int32), offset.astype(np.int64), shape, labels, names, probe

    def _check(self, number: int, name: str, part) -> None:
        """Every row inside the file, and the first row's bytes as positioned reads see them."""
        import numpy as np

        probe, offset, shape = part[5], part[1], part[2]
        sizes = shape.prod(axis=1) if len(shape) else np.zeros(0, np.int64)
        try:
            file_size = os.fstat(self.fd(number)).st_size
        except OSError as err:
            raise CacheError(f"{printable(name)}: cannot read ({err.strerror or err}). " + REBUILD) from None
        if len(offset) and (offset.min() < 0 or (offset + sizes).max() > file_size):
            raise CacheError(f"{printable(name)}: its index points outside the file (truncated?). " + REBUILD)
        if probe:
            got = np.zeros(len(probe), np.uint8)
            read = _read_into(self.fd(number), got, int(offset[0]))
            if read != len(probe) or bytes(got) != probe:
                raise CacheError(f"{printable(name)}: its rows are not where its index says. " + REBUILD)

    def fd(self, number: int) -> int:
        # A forked process (a DataLoader worker) keeps the inherited descriptors: positioned reads do not use the
        # shared file offset, and an open descriptor still reads its file if the entry is cleared meanwhile.
        if number not in self._fds:
            try:
                self._fds[number] = os.open(self.files[number], os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError as err:
                raise CacheError(f"{printable(self.files[number])}: cannot open ({err.strerror or err}). "
                                 + REBUILD) from None
        return self._fds[number]

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass


class DecodedImages:
    """Images of cache entries: `images[i]` is a new uint8 [C, H, W] tensor read from the entry's file.

    `labels` and `files` (paths relative to the prepared folder) hold the rows' labels and images;
    `select(indices)` makes a subset (a fold, the first N images) sharing one row index, and
    `concatenate(parts)` pools entries (train + validation for cross-validation). Pickles as the entry's file
    names, so DataLoader workers read the index themselves.
    """

    def __init__(self, arrow_files: list[str], indices=None, _index: _RowIndex | None = None):
        import numpy as np

        self.arrow_files = list(arrow_files)
        self._index = _index if _index is not None else _RowIndex(self.arrow_files)
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        rows = self._index.labels if self.indices is None else self._index.labels[self.indices]
        self.labels = rows.tolist()

    @property
    def files(self) -> list[str]:
        """Each row's image path, relative to the prepared folder (`train/virus/x.jpeg`)."""
        names = self._index.names
        return list(names) if self.indices is None else [names[i] for i in self.indices]

    @classmethod
    def concatenate(cls, parts: list["DecodedImages"]) -> "DecodedImages":
        """Whole entries one after another (rows in the parts' order); parts must not be subsets."""
        if any(part.indices is not None for part in parts):
            raise ValueError("concatenate whole entries, then select")
        return cls([name for part in parts for name in part.arrow_files])

    def __len__(self) -> int:
        return len(self._index.labels) if self.indices is None else len(self.indices)

    def __getitem__(self, index: int):
        import torch

        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"image {index} of {len(self)}")
        row = index if self.indices is None else int(self.indices[index])
        index_ = self._index
        channels, height, width = (int(v) for v in index_.shape[row])
        image = torch.empty((channels, height, width), dtype=torch.uint8)
        number = int(index_.file[row])
        try:
            read = _read_into(index_.fd(number), image.numpy(), int(index_.offset[row]))
        except OSError as err:
            raise CacheError(f"{printable(index_.files[number])}: cannot read ({err.strerror or err}). "
                             + REBUILD) from None
        if read != image.numel():
            raise CacheError(f"{printable(index_.files[number])}: shorter than its index (truncated?). " + REBUILD)
        return image

    def select(self, indices) -> "DecodedImages":
        """The subset at `indices` (positions in this object), sharing the row index."""
        import numpy as np

        indices = np.asarray(indices, dtype=np.int64)
        rows = indices if self.indices is None else self.indices[indices]
        return DecodedImages(self.arrow_files, rows, _index=self._index)

    def __reduce__(self):
        return DecodedImages, (self.arrow_files, self.indices)


def list_entries(cache_dir: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None
                 ) -> list[tuple[Path, dict]]:
    """(folder, info) of each complete cache entry, optionally only those of one prepared folder."""
    root = cache_root(cache_dir)
    wanted = str(Path(data_dir).resolve()) if data_dir is not None else None
    names: dict[tuple, str | None] = {}

    def reads(folder: Path, info: dict) -> bool:
        """Whether a run on `data_dir` reads this entry: one built from it, or from another folder with the same
        files (a copy), which has the same fingerprint and is therefore shared."""
        if info.get("data_dir") == wanted:
            return True
        key = (info.get("split"), json.dumps(info.get("resize")))
        if key not in names:
            try:
                resize = resize_json(info["resize"])
                names[key] = f"{key[0]}-{resize_name(resize)}-{fingerprint(data_dir, key[0], resize)}"
            except (OSError, ValueError, TypeError, KeyError, IndexError, HfxrayError):  # no such split there
                names[key] = None
        return folder.name == names[key]

    entries = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        info = _read_info(folder) if folder.is_dir() and not folder.name.startswith(".") else None
        if info is not None and (wanted is None or reads(folder, info)):
            entries.append((folder, info))
    return entries


def _unusable_entries(root: Path, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Entries this version no longer reads (another layout version, or a file missing): only space."""
    wanted = str(Path(data_dir).resolve()) if data_dir is not None else None
    unusable = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.is_dir() or folder.name.startswith(".") or _read_info(folder) is not None:
            continue
        try:
            info = json.loads((folder / INFO_NAME).read_text())
        except (OSError, ValueError):
            continue  # not a cache entry: never deleted
        ours = isinstance(info, dict) and info.get("kind") == INFO_KIND
        if ours and (wanted is None or info.get("data_dir") == wanted):
            unusable.append(folder)
    return unusable


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
    shown = str(Path(data_dir).resolve()) if data_dir is not None else None
    for folder, info in entries:
        # listed for --data-dir, an entry built from a copy of that folder is its own (the same files): it is
        # named under the folder asked about, with where it was built from
        where = printable(shown or info["data_dir"]) + (f" (built from {printable(info['data_dir'])}, the same "
                                                        "files)" if shown and info["data_dir"] != shown else "")
        resize = "x".join(map(str, info["resize"])) if isinstance(info["resize"], list) else info["resize"]
        echo(f"  {info['split']:<10} {resize:>5} px {info['rows']:>8} images {info['bytes'] / 2**20:>9.1f} MiB"
             f"  {where}  ({folder.name})")
    echo(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {total / 2**20:.1f} MiB")
    unusable = _unusable_entries(root, data_dir)
    if unusable:
        size = sum(p.stat().st_size for folder in unusable for p in folder.rglob("*") if p.is_file())
        echo(f"{len(unusable)} entr{'y' if len(unusable) == 1 else 'ies'} of an older cache layout or damaged, "
             f"{size / 2**20:.1f} MiB, never read again{'' if clear else ' (--clear deletes them)'}")
    if not clear:
        return 0
    freed = 0
    stale = _stale_builds(root) if data_dir is None else []
    for folder in [folder for folder, _ in entries] + unusable + stale:
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        try:
            shutil.rmtree(folder)
        except OSError as err:
            raise CacheError(f"{printable(str(folder))}: cannot delete ({err.strerror or err}). To fix: check the "
                             "permissions of the cache folder.") from None
        freed += size
    cleared = len(entries) + len(unusable)
    echo(f"cleared {cleared} entr{'y' if cleared == 1 else 'ies'}"
         f"{f' and {len(stale)} unfinished build(s)' if stale else ''}: {freed / 2**20:.1f} MiB freed")
    return freed
