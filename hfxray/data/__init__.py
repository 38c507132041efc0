"""Source folders -> a prepared ImageFolder split by patient, and the prepared folder as later stages read it.

Modules by concern:
- `labels`: the two classes and three splits.
- `records`: `SourceRecord` (one row or folder entry of a source), the shared CSV reader, untrusted names.
- `coronahack`, `cohen`, `kermany`: one reader per source layout; `layouts`: the interface over them.
- `splits`: patient groups and the train / validation / test assignment; `dedupe`: pictures held twice.
- `manifest`: `manifest.csv`, the class folders and the `datasets` ImageFolder (what training reads).
- `preparation`: `prepare`, which builds the folder (the output swap is `hfxray.outputs`').

Importing this package imports only the light modules (labels, records, manifest); `prepare` loads the
preparation code when first used.
"""

from __future__ import annotations

from .labels import CLASS_NAMES, POOL_SPLITS, SPLITS
from .manifest import (MANIFEST_NAME, check_classes, check_prepared, kept_counts, load_imagefolder,
                       prepared_counts, read_manifest)
from .records import DataError

__all__ = ["CLASS_NAMES", "POOL_SPLITS", "SPLITS", "MANIFEST_NAME", "DataError", "check_classes", "check_prepared",
           "kept_counts", "load_imagefolder", "prepare", "prepared_counts", "read_manifest"]


def __getattr__(name: str):
    # `hfxray.data.prepare` without importing the preparation code (imaging, duplicates) for every reader.
    if name in ("prepare", "PrepareSummary"):
        from . import preparation

        return getattr(preparation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
