"""One Predictor per model version per process, loaded once and shared by all threads."""
from __future__ import annotations

import logging
import threading

from model.predictor import Predictor

from backend.serving.registry import VersionRef

log = logging.getLogger(__name__)


class ModelHolder:
    def __init__(self, max_pixels: int):
        self.max_pixels = max_pixels
        self._predictors: dict[str, Predictor] = {}
        self._lock = threading.Lock()

    def predictor(self, version: VersionRef) -> Predictor:
        key = str(version.folder)
        found = self._predictors.get(key)
        if found is not None:
            return found
        with self._lock:  # concurrent first requests load the weights once
            found = self._predictors.get(key)
            if found is None:
                log.info("loading model version %s", version.name)
                found = Predictor(version.folder, max_pixels=self.max_pixels)
                self._predictors[key] = found
            return found

    def loaded(self) -> list[str]:
        return list(self._predictors)
