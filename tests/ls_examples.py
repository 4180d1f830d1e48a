"""Recorded Label Studio 1.23.2 bodies (tokens redacted; docs/developers/label-studio-protocol.md
says how they were recorded), kept in the repository so the suite runs from a clone alone. A
missing file is a failure, not a skip: the tests that read them would otherwise pass by testing
nothing."""
import copy
import json
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent / "fixtures" / "label-studio-examples"


def example(name: str) -> dict:
    """The request body of the recorded exchange `name` (a fresh copy each call)."""
    path = EXAMPLES / name
    if not path.is_file():
        raise FileNotFoundError(f"test fixture {path} is missing")
    return copy.deepcopy(json.loads(path.read_text())["request"]["body"])
