"""Importers that turn a public dataset's published layout into training manifests.

One module per dataset; each yields (split, row) pairs that `writer.write_splits` turns into
DIR/<split>.jsonl, each with the classes header line. Importers read only the annotation files:
they never open or stat an image (255,000 AVA files on a network disk would take minutes, and
`aesemo train` already skips a missing image with a warning naming it).
"""
from __future__ import annotations

from pathlib import Path

from . import ava, emoset, fi, iea
from .writer import write_splits

IMPORTERS = {"ava": ava.import_ava, "fi": fi.import_fi, "emoset": emoset.import_emoset, "iea": iea.import_iea}


def import_dataset(name: str, root: str | Path, out_dir: str | Path, soft: bool = False) -> dict[str, int]:
    """Write out_dir/<split>.jsonl for dataset `name` found at `root`; returns rows per split.
    `soft`: aesthetic targets from the share of raters on each side of 5 (AVA, IEA)."""
    classes, rows = IMPORTERS[name](Path(root), soft=soft)
    return write_splits(out_dir, classes, rows)
