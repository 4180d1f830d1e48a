"""A project's consensus policy: the method, how many annotators and how much agreement make a
label agreed, and what a tie is. Declared here, below both the settings (the deployment's default
policy) and backend/votes/consensus.py (which applies it), so each default and bound is written once.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from model.limits import Limit

METHODS = ("majority", "dawid_skene")
TIE_BREAKS = ("unresolved", "soft")


POLICY_LIMITS = {"min_annotators": Limit(int, 1, 100), "min_agreement": Limit(float, 0, 1)}


@dataclass(frozen=True)
class Policy:
    method: str = "majority"
    min_annotators: int = 3
    min_agreement: float = 0.5
    tie_break: str = "unresolved"        # or "soft": a tie is agreed, trained on the split

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        # numbers, not "0.5" (it would break every later comparison), within bounds (10**30
        # annotators overflows numpy's integers); LimitError names the field and the range
        for name, limit in POLICY_LIMITS.items():
            limit.check(name, getattr(self, name))
        if self.tie_break not in TIE_BREAKS:
            raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {self.tie_break!r}")

    def to_dict(self) -> dict:
        return asdict(self)
