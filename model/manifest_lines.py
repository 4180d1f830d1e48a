"""A manifest's lines as JSON objects, without torch: what `read_manifest` and the dataset
tools (`aesemo dataset merge`) both read before they interpret a row."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import ManifestError


def read_manifest_records(path: Path) -> tuple[dict | None, list[tuple[int, dict]]]:
    """(the classes header or None, [(1-based line number, row object), ...]); blank lines
    are skipped, anything else that is not a JSON object stops the read naming path:line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ManifestError(f"manifest {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest {path} cannot be read: {exc}") from None

    records = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise ManifestError(f"{path}:{number}: a row must be a JSON object")
        records.append((number, record))

    header = records[0][1].get("classes") if records and "image" not in records[0][1] else None
    if header is not None:
        records = records[1:]
    return header, records
