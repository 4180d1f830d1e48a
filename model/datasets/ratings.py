"""Aesthetic class from a histogram of ratings: the threshold convention AVA and IEA share."""
from __future__ import annotations

THRESHOLD = 5.0


def aesthetic_label(counts: dict[int, int], soft: bool) -> str | dict[str, float] | None:
    """counts: {rating: number of raters}. Hard: "high" when the mean rating is >= 5, else "low"
    (AVA's usual delta = 0 split; IEA's "mean below 5 is low"). Soft: {"high": share of ratings
    above 5, "low": the rest}. None when nobody rated the image."""
    raters = sum(counts.values())
    if raters == 0:
        return None
    if soft:
        above = sum(n for rating, n in counts.items() if rating > THRESHOLD)
        return {"high": round(above / raters, 6), "low": round(1 - above / raters, 6)}
    mean = sum(rating * n for rating, n in counts.items()) / raters
    return "high" if mean >= THRESHOLD else "low"
