"""The models this process serves: one Predictor per version folder, loaded once and shared by
all threads. Only the hot swap (backend/serving/hotswap.py) decides which one a project serves."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from model.predictor import Predictor
from model.version import is_trained

from backend.serving.registry import VersionRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    version: str
    folder: Path
    predictor: Predictor

    @property
    def trained(self) -> bool:
        """Whether its task heads were ever trained on labels: an untrained model's suggestions are random."""
        return is_trained(self.predictor.meta)

    def knows(self, classes: dict) -> bool:
        """Whether the model has every class of these class lists (task -> names)."""
        return all(set(self.predictor.classes[task]) >= set(names) for task, names in classes.items())


class ModelCache:
    def __init__(self, max_pixels: int):
        self.max_pixels = max_pixels
        self._models: dict[Path, ServedModel] = {}
        self._lock = threading.Lock()

    def load(self, version: VersionRef) -> ServedModel:
        """The version's model, loaded (and its weights' hash checked) on first use; raises what
        Predictor raises when the files are not a valid version."""
        found = self._models.get(version.folder)
        if found is not None:
            return found
        with self._lock:  # concurrent first requests load the weights once
            found = self._models.get(version.folder)
            if found is None:
                log.info("loading model version %s", version.name)
                found = ServedModel(version.name, version.folder,
                                    Predictor(version.folder, max_pixels=self.max_pixels))
                self._models[version.folder] = found
            return found

    def forget(self, folder: Path) -> None:
        """Drop a version nobody serves any more (requests still running keep their reference);
        loaded again, hash checked, if it comes back."""
        self._models.pop(folder, None)
