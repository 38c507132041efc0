"""Each picture held twice (by two sources, or by one under two names) kept once, its patients joined."""

from __future__ import annotations

from collections import defaultdict

from ..duplicates import find_same_pictures, fingerprint
from ..errors import excerpt, printable
from ..imaging import ImageProblem
from .records import SourceRecord, link_problem, source_path
from .splits import components


def merge_duplicates(records: list[SourceRecord], order: list[str], test_source: str | None,
                     max_pixels: int, progress) -> tuple[int, int]:
    """Keep once each picture held twice, by two sources or by one under two names (`hfxray.duplicates`: identical
    bytes, or a close perceptual hash confirmed by the thumbnails' correlation). The copy kept is the held-out test
    source's (`test_source`), else the first source's in `order`, and within a source the one in its test split,
    else the first listed; the others are skipped as duplicates, and their patient groups join the kept one's, so
    that the picture and its patients sit in one split (unless a source's own TEST split stands between them:
    warned after the splits are assigned). Images excluded by their class are compared too,
    so that the manifest lists every copy; a picture kept once and excluded (or labelled otherwise) elsewhere is a
    conflict and skipped everywhere. Returns (kept copies dropped, copies found)."""
    kept = [r for r in records if r.kept or (r.reason.startswith(("excluded class", "excluded finding"))
                                             and r.source_dir is not None)]
    prints = []
    for record in progress(kept, desc="hashing images", unit="img"):
        path = source_path(record)
        try:
            if problem := link_problem(path, path.parent):  # excluded files were not checked by _check_files
                raise ImageProblem(problem)
            print_ = record.fingerprint or fingerprint(path, max_pixels)
        except ImageProblem as problem:  # what decoding the full image finds (NaN pixels...), as writing it would
            if record.kept:
                record.reason = str(problem)
            print_ = None
        except OSError as problem:
            if record.kept:
                record.reason = f"unreadable while hashing: {excerpt(problem)}"
            print_ = None
        prints.append(print_)
        record.phash = f"{print_.phash:016x}" if print_ else ""
    pairs = find_same_pictures(prints)
    evidence: dict[tuple[int, int], str] = {}
    for (a, b), why in pairs.items():
        evidence[(a, b)] = evidence[(b, a)] = why
    pictures: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(components(len(kept), pairs)):
        pictures[label].append(i)
    dropped = 0
    rank = {name: position for position, name in enumerate(order)}
    for members in pictures.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda i: (kept[i].source != test_source, rank[kept[i].source], kept[i].split != "test", i))
        keeper = kept[members[0]]
        if len({kept[i].label for i in members}) > 1:
            shown = ", ".join(f"{printable(kept[i].source)}/{printable(kept[i].source_file)}" for i in members)
            for i in members:
                if kept[i].kept:
                    kept[i].reason = f"duplicate with conflicting labels ({shown})"
            continue
        for i in members[1:]:
            record = kept[i]
            how = evidence.get((members[0], i))
            if how is None:  # a copy of a copy: name the link that was found
                j = next(j for j in members if (i, j) in evidence)
                how = f"{evidence[(i, j)]} with {printable(kept[j].source)}/{printable(kept[j].source_file)}"
            record.duplicate_of = f"{keeper.source}/{keeper.source_file}"
            keeper.merged_with.append(f"{record.source}/{record.source_file}")
            keeper.also_groups.append(record.group)
            if record.kept:
                record.reason = (f"duplicate: the same image as {printable(keeper.source)}/"
                                 f"{printable(keeper.source_file)} ({how})")
                dropped += 1
    return dropped, sum(1 for record in kept if record.duplicate_of)
