"""The promotion rule of a training job (docs/admins/versions.md, "Promotion"): never a version that may
not serve; with `metric`, a like-for-like comparison: the candidate and the current version
scored on the same held-out tasks, decided on the paired difference of their mean macro-F1 and
its bootstrap interval. Evidence too thin to decide says so, and then the setting
AESEMO_PROMOTION_INCONCLUSIVE decides (by default: the version trained on more labels, never
one whose outputs are broken).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.bootstrap import paired_difference
from model.classes import TASKS
from model.heldout import HELDOUT_SPLIT
from model.manifest import read_manifest
from model.version import is_trained

from backend.core.settings import Settings
from backend.serving.registry import refusal

log = logging.getLogger(__name__)


@dataclass
class HeldOutTasks:
    images: list[Path]
    truth: dict[str, np.ndarray]      # per task type the true class index, -1 where unlabelled
    classes: dict[str, int]           # per task type the number of classes

    def labelled(self) -> dict[str, int]:
        return {task: int((labels >= 0).sum()) for task, labels in self.truth.items()}


def heldout_tasks(manifest_path: Path, classes: dict) -> HeldOutTasks | None:
    """The manifest's held-out rows (a soft target counts as its most probable class); None without any."""
    rows = [row for row in read_manifest(manifest_path, classes=classes).rows if row.split == HELDOUT_SPLIT]
    if not rows:
        return None
    truth = {task: np.array([-1 if row.targets[task] is None else int(row.targets[task].argmax())
                             for row in rows]) for task in TASKS}
    return HeldOutTasks([row.image for row in rows], truth, {task: len(classes[task]) for task in TASKS})


def predicted_classes(folder: Path, tasks: HeldOutTasks) -> dict[str, np.ndarray]:
    """The version's class for every held-out task, as it would answer in service."""
    from model.predictor import Predictor  # torch: loaded only when a job promotes
    probabilities = Predictor(folder, device="cpu", precision="fp32").predict_paths(tasks.images)
    return {task: np.array([int(np.argmax(p[task])) for p in probabilities]) for task in TASKS}


def like_for_like(candidate: Path, current: Path, tasks: HeldOutTasks | None) -> dict | None:
    """Both versions scored on the same held-out tasks. None without held-out tasks; a current
    version that cannot be loaded or scored leaves the candidate compared with nothing, and
    the evidence says why (never an error: the job has a version to judge either way)."""
    if tasks is None or not any(tasks.labelled().values()):
        return None
    truth = {task: labels for task, labels in tasks.truth.items() if (labels >= 0).any()}
    try:
        mine = predicted_classes(candidate, tasks)
    except Exception as exc:  # a candidate that cannot answer: refusal() says why, or its own metrics judge it
        log.warning("candidate %s could not be scored on the held-out tasks: %s", candidate.name, exc)
        return None
    try:
        theirs = predicted_classes(current, tasks)
    except Exception as exc:  # any failure of an old version: judge the candidate alone
        log.warning("current version %s could not be scored on the held-out tasks: %s", current.name, exc)
        alone = paired_difference(truth, mine, mine, tasks.classes)
        return {"candidate": alone["candidate"], "n": alone["n"], "labelled": tasks.labelled(),
                "current_error": f"{type(exc).__name__}: {exc}"}
    return {**paired_difference(truth, mine, theirs, tasks.classes), "labelled": tasks.labelled()}


def promotion(settings: Settings, parent_meta: dict, meta: dict, folder: Path,
              evidence: dict | None = None) -> tuple[bool, str]:
    """Never a version that may not serve (see registry.refusal); every other one with `always`;
    else on the like-for-like evidence, or on the version's own held-out metric without it."""
    why_not = refusal(folder)
    if why_not:
        return False, f"not promotable: {why_not}"
    if settings.promotion == "always":
        return True, "promotion rule: always"
    if evidence is None:
        return by_metric(settings, parent_meta, meta)
    return by_evidence(settings, parent_meta, meta, evidence)


def by_evidence(settings: Settings, parent_meta: dict, meta: dict, evidence: dict) -> tuple[bool, str]:
    new = evidence["candidate"]
    broken = broken_outputs(new, meta)
    if broken:
        return False, f"held-out macro-F1 {new:.4f} on {evidence['n']} tasks, and the new version {broken}"
    if not is_trained(parent_meta):
        return True, f"first trained version (held-out macro-F1 {new:.4f} on {evidence['n']} tasks)"
    if "current_error" in evidence:
        return True, (f"held-out macro-F1 {new:.4f} on {evidence['n']} tasks, compared with nothing: the current "
                      f"version could not be scored ({evidence['current_error']})")
    old, (low, high) = evidence["current"], evidence["difference_ci"]
    difference = new - old
    note = (f"on the same {evidence['n']} held-out tasks: macro-F1 {new:.4f} vs current {old:.4f}, difference "
            f"{difference:+.4f} ({evidence['level']:.0%} interval {low:+.4f} to {high:+.4f})")
    thin = [f"{task} {count}" for task, count in evidence["labelled"].items()
            if 0 < count < settings.min_heldout]
    if thin:
        return inconclusive(settings, parent_meta, meta, f"{note}; rests on little evidence (labelled held-out "
                            f"tasks: {', '.join(thin)}, under AESEMO_MIN_HELDOUT={settings.min_heldout})")
    if low > 0:
        return True, f"{note}: better"
    if high < 0 and difference < -settings.promotion_margin:
        return False, f"{note}: worse"
    return inconclusive(settings, parent_meta, meta, f"{note}: inconclusive")


def inconclusive(settings: Settings, parent_meta: dict, meta: dict, note: str) -> tuple[bool, str]:
    """AESEMO_PROMOTION_INCONCLUSIVE: keep the current version, or prefer the one trained on more labels."""
    if settings.promotion_inconclusive == "current":
        return False, f"{note}; the current version stays (AESEMO_PROMOTION_INCONCLUSIVE=current)"
    new, old = trained_labels(meta), trained_labels(parent_meta)
    if new > old:
        return True, f"{note}; promoted: trained on more labels ({new} vs {old})"
    return False, f"{note}; the current version stays: trained on as many labels or more ({old} vs {new})"


def trained_labels(meta: dict) -> int:
    """How many labelled rows the version trained on (0 when model.json does not say)."""
    value = (meta.get("training") or {}).get("train_size")
    return value if isinstance(value, int) else 0


def broken_outputs(score: float, meta: dict) -> str | None:
    """Why the version's held-out outputs are broken, None when they are not."""
    if not math.isfinite(score):
        return "has no finite score"
    if score <= 0:
        return "scores 0"
    if one_class(meta):
        return "answers one class for every held-out image"
    return None


def score(meta: dict) -> float | None:
    """Mean held-out macro-F1 over the tasks with held-out labels; None without any."""
    values = [m.get("macro_f1") for m in (meta.get("metrics") or {}).values() if m]
    if not values:
        return None
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return math.nan
    return sum(values) / len(values)


def one_class(meta: dict) -> bool:
    """Whether the version answered one class for every held-out image, in every task whose
    held-out images have two true classes or more: it learned nothing (a network gone NaN does
    this, as the argmax of NaN is class 0)."""
    judged = [m["confusion"] for m in (meta.get("metrics") or {}).values()
              if m and sum(1 for row in m.get("confusion") or [] if sum(row) > 0) >= 2]
    return bool(judged) and all(sum(1 for column in zip(*c) if sum(column) > 0) == 1 for c in judged)


def by_metric(settings: Settings, parent_meta: dict, meta: dict) -> tuple[bool, str]:
    """Without stable held-out tasks to score both versions on (a manifest without held-out rows):
    each version's own held-out metric was measured on its own split, so the two are not
    compared. A candidate with no valid score, a score of 0 or one class for everything is not
    promoted; the first trained version is; otherwise AESEMO_PROMOTION_INCONCLUSIVE decides."""
    new = score(meta)
    if new is None or not math.isfinite(new):
        return False, f"no valid held-out macro-F1 ({new}) to judge it by; promote it by hand if wanted"
    own = f"held-out macro-F1 {new:.4f} on its own {heldout_count(meta)} held-out tasks"
    if not is_trained(parent_meta):  # whatever it scores, it replaces random weights
        return True, f"first trained version ({own})"
    broken = broken_outputs(new, meta)
    if broken:
        return False, f"{own}, and the new version {broken}"
    return inconclusive(settings, parent_meta, meta, "no stable held-out tasks yet to score both versions on, "
                        f"so scores from different splits are not compared (the new version: {own})")


def heldout_count(meta: dict) -> int:
    """The version's held-out tasks: the most any task type had labelled."""
    counts = [m.get("n") for m in (meta.get("metrics") or {}).values() if m]
    return max((c for c in counts if isinstance(c, int)), default=0)
