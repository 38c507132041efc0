"""The two classes and the three splits every prepared folder, run and report uses (no preparation code here)."""

from __future__ import annotations

CLASS_NAMES = ("normal", "virus")

SPLITS = ("train", "validation", "test")

POOL_SPLITS = ("train", "validation")  # what cross-validation and the refit train on; test is never pooled
