"""A cohort of review folders as one reviewer's worklist: which case comes next.

A *cohort folder* holds review folders (one per case, each made by ``review start``).  Opening
the cohort instead of a case gives the reviewer's next case that still has ungraded slices.
Blinded cases come in a random order of their own for each reviewer (issue 16: "cases in random
order"), so no two reviewers meet the cases, and their learning effects, in the same sequence; the
order is a fixed function of the reviewer and the case names, so it survives closing and reopening.
Open (unblinded) cases come in name order.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from .flags import SliceFlag
from .navigation import flags_by_item, item_stops
from .session import MANIFEST_FILE, read_manifest, replay_state
from .storage import log_path


def review_folders(cohort: str | Path) -> list[Path]:
    """The review folders directly inside ``cohort``, by name."""
    return sorted(path.parent for path in Path(cohort).glob(f"*/{MANIFEST_FILE}"))


def is_cohort(folder: str | Path) -> bool:
    folder = Path(folder)
    return not (folder / MANIFEST_FILE).is_file() and bool(review_folders(folder))


def case_order(folders: list[Path], reviewer: str) -> list[Path]:
    """Open cases by name, then the blinded ones in this reviewer's own random order."""
    blinded = [folder for folder in folders if read_manifest(folder).blinded]
    ordered = [folder for folder in folders if folder not in blinded]
    seed = hashlib.sha256("\n".join([reviewer.strip(), *(f.name for f in blinded)]).encode("utf-8")).hexdigest()
    random.Random(seed).shuffle(blinded)
    return ordered + blinded


def remaining(folder: Path, reviewer: str) -> int:
    """Slices of ``folder`` that ``reviewer`` has not graded yet."""
    manifest = read_manifest(folder)
    flags = flags_by_item(manifest.items, (SliceFlag.from_json(f) for f in manifest.flags))
    stops = item_stops(manifest.items, manifest.geometry.n_slices, flags)
    state, _ = replay_state(log_path(folder, reviewer))
    return sum(1 for stop in stops if (stop.item, stop.slice_index) not in state.grades)


def next_case(cohort: str | Path, reviewer: str) -> Path | None:
    """The reviewer's first case (in :func:`case_order`) with ungraded slices; None when all are done."""
    for folder in case_order(review_folders(cohort), reviewer):
        if remaining(folder, reviewer):
            return folder
    return None


def resolve(folder: str | Path, reviewer: str) -> Path:
    """``folder`` itself when it is a review, the next case when it is a cohort (InputError when all done)."""
    from ..errors import InputError

    folder = Path(folder)
    if not is_cohort(folder):
        return folder
    case = next_case(folder, reviewer)
    if case is None:
        raise InputError(f"{reviewer.strip()} has graded every case of {folder}")
    return case
