"""Label Studio ids (projects, tasks, annotations, users) as they enter the backend.

Label Studio's ids are positive database keys (bigint). Anything else is refused where it
enters, naming the field, because an id ends up in Redis keys, JSON records and sorts: a bool
made Redis refuse the command (a 500), and a 5,000-digit project id made `int()` refuse the
project list, so the admin page failed for good.
"""
from __future__ import annotations

from backend.core.errors import InvalidInput

MAX_ID = 2**63 - 1


def as_id(value) -> int | None:
    """`value` if it is an id: an int (not a bool) in 1..MAX_ID; else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID:
        return value
    return None


def id_from_text(text: str) -> int | None:
    """The id an all-ASCII-digit string stands for (leading zeros allowed), else None."""
    # isdigit() alone would take "²" or Arabic-Indic digits; the length test keeps int() off
    # strings it would refuse (over 4,300 digits) or that cannot be below 2**63 anyway
    digits = text.lstrip("0")
    if not (text.isascii() and text.isdigit()) or len(digits) > len(str(MAX_ID)):
        return None
    return as_id(int(digits or "0"))


def require_id(value, field: str) -> int:
    """`value` as an id, or InvalidInput naming `field`."""
    found = as_id(value)
    if found is None:
        raise InvalidInput(f"\"{field}\" must be a positive integer id below 2**63, got {shown(value)}")
    return found


def shown(value) -> str:
    """A short repr for an error message; repr() itself raises on ints over 4,300 digits."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except ValueError:  # a container holding such an int
        return f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."
