"""A project's stable held-out set: a task is held out or not by a hash of (project, task id),
so the decision of one task never depends on the others. Adding tasks never moves a task
between training and held-out, no version of the project ever trains on a held-out task, and
the set only grows (raising the fraction only adds tasks to it).
"""
from __future__ import annotations

import hashlib

import torch

HELDOUT_SPLIT = "heldout"   # the manifest "split" of held-out rows


def held_out(project: str, task, fraction: float) -> bool:
    """Whether `task` of `project` is held out: the first 8 bytes of a sha256 as a number in [0, 1)."""
    digest = hashlib.sha256(f"{project}:{task}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < fraction


def mark_held_out(rows: list[dict], project: str, fraction: float) -> list[dict]:
    """Snapshot rows (each with its "task") with "split": "heldout" on the held-out ones."""
    return [{**row, "split": HELDOUT_SPLIT} if held_out(project, row["task"], fraction) else row for row in rows]


def named_split(rows, split: str | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(training, held-out) indices of manifest rows by their split name; None when no row carries
    it (a manifest without the marks trains with the seeded random split)."""
    if split is None:
        return None
    marked = [i for i, row in enumerate(rows) if row.split == split]
    if not marked:
        return None
    rest = [i for i, row in enumerate(rows) if row.split != split]
    return torch.tensor(rest, dtype=torch.long), torch.tensor(marked, dtype=torch.long)


def labelled_counts(data, index: torch.Tensor) -> dict[str, int]:
    """Per task type, how many of the rows at `index` are labelled for it."""
    return {task: int(mask[index].sum()) for task, mask in data.masks.items()}
