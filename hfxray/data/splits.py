"""Patient-level splits: groups that share an image join, a source's TEST stays TEST, a source without one has a
test split carved by patient, and validation is carved out of train by patient group."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..errors import printable
from .records import SourceRecord


def assign_validation(records: list[SourceRecord], val_fraction: float, seed: int) -> None:
    """Move whole patient groups from train to validation, ~val_fraction of each class, deterministically."""
    carve(records, "train", "validation", val_fraction, seed)


def carve(records: list[SourceRecord], from_split: str, to_split: str, fraction: float, seed: int) -> None:
    """Move whole patient groups from `from_split` to `to_split`, ~fraction of each source's class.

    Each group counts for the source and class most of its images have; (source, class) pairs are filled one after
    the other by taking shuffled groups while that brings the pair's count closer to its target.
    """
    groups: dict[str, list[SourceRecord]] = defaultdict(list)
    for record in records:
        if record.kept and record.split == from_split:
            groups[record.group].append(record)
    by_class: dict[tuple[str, str], list[str]] = defaultdict(list)
    for group, members in sorted(groups.items()):
        majority = Counter((r.source, r.label) for r in members).most_common(1)[0][0]
        by_class[majority].append(group)
    rng = random.Random(seed)
    for label in sorted(by_class):
        candidates = by_class[label]
        rng.shuffle(candidates)
        target = fraction * sum(len(groups[g]) for g in candidates)
        taken = 0
        for group in candidates:
            size = len(groups[group])
            if abs(taken + size - target) < abs(taken - target):
                taken += size
                for record in groups[group]:
                    record.split = to_split


def patients_in_train_and_test(records: list[SourceRecord]) -> list[str]:
    splits_by_group: dict[str, set[str]] = defaultdict(set)
    for record in records:
        if record.kept:
            splits_by_group[record.group].add("test" if record.split == "test" else "train")
    return sorted(g for g, s in splits_by_group.items() if len(s) > 1)


def components(n: int, pairs) -> np.ndarray:
    """The connected-component label of each of `n` items joined by `pairs` (pairs of item indices)."""
    pairs = np.asarray(list(pairs), dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def join_groups(records: list[SourceRecord]) -> None:
    """Patient groups that share an image become one group, named by its members joined with "+"."""
    names = sorted({r.group for r in records} | {g for r in records for g in r.also_groups})
    index = {name: i for i, name in enumerate(names)}
    labels = components(len(names), [(index[r.group], index[g]) for r in records for g in r.also_groups])
    members: dict[int, list[str]] = defaultdict(list)
    for name, label in zip(names, labels):
        members[label].append(name)
    for record in records:
        record.group = "+".join(members[labels[index[record.group]]])


def assign_splits(records: list[SourceRecord], val_fraction: float, test_fraction: float, seed: int,
                  test_source: str | None = None) -> None:
    """train / validation / test for every kept record, by patient group.

    With `test_source`, that source is the whole test split and the others are train (their own test splits
    folded in); images of the other sources whose patient group reaches into the test source are skipped.
    Otherwise each source keeps its own test split; a source without one (Cohen) has ~test_fraction of each class's
    patients carved into test. A group that spans sources follows its test member, else its train member.
    Validation is then carved out of train by patient.
    """
    kept = [r for r in records if r.kept]
    by_group: dict[str, list[SourceRecord]] = defaultdict(list)
    for record in kept:
        by_group[record.group].append(record)
    if test_source is not None:
        for members in by_group.values():
            held_out = any(r.source == test_source for r in members)
            for record in members:
                if record.source == test_source:
                    record.split = "test"
                elif held_out:
                    record.reason = (f"same patient group as a test image of the held-out source "
                                     f"{printable(test_source)} (--test-source)")
                else:
                    record.split = "train"
    else:
        for members in by_group.values():
            splits = {r.split for r in members}
            spans_sources = len({r.source for r in members}) > 1  # within one source, its own split stands
            fixed = "test" if "test" in splits else "train" if "train" in splits else "pending"
            for record in members:
                if spans_sources or not record.split:
                    record.split = fixed
        carve(records, "pending", "test", test_fraction, seed)
        for record in kept:
            if record.split == "pending":
                record.split = "train"
    assign_validation(records, val_fraction, seed)
