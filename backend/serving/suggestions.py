"""Whether a project's suggestions reach Label Studio at all.

A version whose task heads never saw a labelled image answers near-uniform classes that hardly
depend on the image (the demo suggested "low / amusement" for every photograph), and random
suggestions anchor annotators: worse than none. So by default `/predict` sends none (`[]` per
task) until the project serves a trained version, and `/setup` and the log say why;
AESEMO_SUGGEST_UNTRAINED sends them anyway, for demos and tests.
"""
from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)

# ends the name of every base version: the name Label Studio shows must not pass for a trained model's
UNTRAINED_SUFFIX = "-untrained"
WITHHELD_FIELD = "no_suggestions"  # in /setup's and /predict's answers; Label Studio reads neither


def withheld_reason(settings, version: str, trained: bool) -> str | None:
    """Why `version`'s suggestions are not sent; None when they are."""
    if trained or settings.suggest_untrained:
        return None
    return (f"model version {version} was never trained on labelled images, so its suggestions would be "
            f"random; none are sent until the project has a trained version: label at least "
            f"{settings.min_training_labels} tasks (agreed by consensus) and train (Label Studio's "
            f"\"Start Training\", the admin page, or POST /projects/<id>/train), or register a trained "
            f"base model (aesemo base set DIR, or AESEMO_BASE_MODEL); "
            f"AESEMO_SUGGEST_UNTRAINED=1 sends them anyway")


class WithheldLog:
    """One log line per project and version: Label Studio calls /setup and /predict many times a minute."""

    def __init__(self):
        self._logged: set[tuple[str | None, str]] = set()
        self._lock = threading.Lock()

    def note(self, project: str | None, version: str, reason: str) -> None:
        with self._lock:
            if (project, version) in self._logged:
                return
            self._logged.add((project, version))
        log.warning("project %s: no suggestions: %s", project if project is not None else "(none given)", reason)
