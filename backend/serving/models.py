"""The models this process serves: one predictor per version folder, loaded once and shared by
all threads. Only the hot swap (backend/serving/hotswap.py) decides which one a project serves.

A version serves from its exported CPU runtime (model/runtime.py) when one was made for its
weights and passed the agreement check; otherwise from PyTorch. A version without a runtime
record serves PyTorch at once and has its runtime made by a child process at a lower CPU priority
(model/export_process.py; one process at a time per folder, under a file lock), which a thread
here waits for, then switches to it: requests never wait for an export, the export's memory goes
back to the system when it ends, and an export that fails leaves PyTorch serving with the reason
logged and recorded.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from model.errors import AesemoError
from model.predictor import Predictor, PredictorBase
from model.version import is_trained

from backend.serving.registry import VersionRef

log = logging.getLogger(__name__)

PATHS = ("auto", "pytorch")
# the export child's niceness: this process's requests get the CPU first
EXPORT_NICENESS = 10


@dataclass
class ServedModel:
    version: str
    folder: Path
    # replaced (one assignment) when the runtime variant is ready; a request reads it once
    predictor: PredictorBase
    # which inference path serves and why: the admin page and the log show it
    path_reason: str = ""

    @property
    def trained(self) -> bool:
        """Whether its task heads were ever trained on labels: an untrained model's suggestions are random."""
        return is_trained(self.predictor.meta)

    @property
    def path(self) -> str:
        return getattr(self.predictor, "path", "pytorch")

    def knows(self, classes: dict) -> bool:
        """Whether the model has every class of these class lists (task -> names)."""
        return all(set(self.predictor.classes[task]) >= set(names) for task, names in classes.items())


class ModelCache:
    def __init__(self, max_pixels: int, inference_path: str = "pytorch", min_agreement: float = 0.99,
                 precision: str = "auto"):
        self.max_pixels = max_pixels
        self.inference_path = inference_path
        self.min_agreement = min_agreement
        self.precision = precision  # the PyTorch predictor's, and what the runtime's speed gate times
        self._models: dict[Path, ServedModel] = {}
        self._lock = threading.Lock()
        self._exports: dict[Path, threading.Thread] = {}

    def load(self, version: VersionRef) -> ServedModel:
        """The version's model, loaded (and its files' hashes checked) on first use; raises what
        Predictor raises when the files are not a valid version."""
        found = self._models.get(version.folder)
        if found is not None:
            return found
        with self._lock:  # concurrent first requests load the weights once
            found = self._models.get(version.folder)
            if found is None:
                log.info("loading model version %s", version.name)
                found = self._load(version)
                self._models[version.folder] = found
            return found

    def _load(self, version: VersionRef) -> ServedModel:
        if self.inference_path == "pytorch":
            predictor = self._pytorch(version.folder)
            return ServedModel(version.name, version.folder, predictor,
                               pytorch_reason(predictor, "AESEMO_INFERENCE_PATH=pytorch"))
        record, why = self._runtime_record(version.folder)
        if record is not None and record["serving"] != "pytorch":
            runtime, why = self._runtime_predictor(version.folder, record)
            if runtime is not None:
                return ServedModel(version.name, version.folder, runtime, f"{runtime.path}: {why}")
        predictor = self._pytorch(version.folder)
        served = ServedModel(version.name, version.folder, predictor, pytorch_reason(predictor, why))
        if record is None and why == NOT_MADE:
            self._export_later(served)
        log.info("model version %s serves %s", version.name, served.path_reason)
        return served

    def _pytorch(self, folder: Path) -> Predictor:
        return Predictor(folder, precision=self.precision, max_pixels=self.max_pixels)

    def _runtime_record(self, folder: Path) -> tuple[dict | None, str]:
        from model import runtime
        if not runtime.runtime_available():
            return None, "the OpenVINO runtime is not installed"
        try:
            record = runtime.read_runtime(folder)
        except AesemoError as exc:
            log.warning("ignoring the runtime record of %s: %s", folder, exc)
            return None, f"bad runtime record: {exc}"
        if record is None:
            return None, NOT_MADE
        return record, record["reason"]

    def _runtime_predictor(self, folder: Path, record: dict) -> tuple[PredictorBase | None, str]:
        from model.runtime import RuntimePredictor
        try:
            return RuntimePredictor(folder, record, self.max_pixels), record["reason"]
        except Exception as exc:  # a runtime that cannot load means PyTorch serves, never a 500
            log.warning("runtime of %s not used (%s: %s); PyTorch serves", folder, type(exc).__name__, exc)
            return None, f"its runtime did not load ({type(exc).__name__}: {exc})"

    def _export_later(self, served: ServedModel) -> None:
        if served.folder in self._exports:
            return
        thread = threading.Thread(target=self._export, args=(served,), name="runtime-export", daemon=True)
        self._exports[served.folder] = thread
        thread.start()

    def _export(self, served: ServedModel) -> None:
        """Make the runtime (or wait for the process making it), then serve it if it passed."""
        from model import runtime
        from model.export_process import export_in_child
        try:
            # the other workers (and a training job exporting it) wait, then read its record
            record = runtime.export_once(served.folder, lambda: export_in_child(
                served.folder, runtime.export_runtime, niceness=EXPORT_NICENESS,
                threshold=self.min_agreement, precision=self.precision))
        except Exception as exc:  # the PyTorch path keeps serving; the reason is logged
            log.warning("runtime export of %s failed (%s: %s); PyTorch keeps serving", served.version,
                        type(exc).__name__, exc)
            served.path_reason = pytorch_reason(served.predictor, f"runtime export failed ({type(exc).__name__}: {exc})")
            return
        if record["serving"] == "pytorch":
            served.path_reason = pytorch_reason(served.predictor, record["reason"])
            return
        predictor, why = self._runtime_predictor(served.folder, record)
        if predictor is not None:
            served.predictor = predictor
        served.path_reason = f"{served.path}: {why}"
        log.info("model version %s now serves %s", served.version, served.path_reason)

    def wait_for_exports(self, timeout_s: float | None = None) -> None:
        """Block until the background exports started so far end, at most `timeout_s` in all."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for thread in list(self._exports.values()):
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def forget(self, folder: Path) -> None:
        """Drop a version nobody serves any more (requests still running keep their reference);
        loaded again, hash checked, if it comes back."""
        self._models.pop(folder, None)


NOT_MADE = "no runtime made for these weights yet"


def pytorch_reason(predictor: Predictor, why: str) -> str:
    """Why PyTorch serves, and in which precision (how "auto" chose it: the two timings)."""
    return f"pytorch in {predictor.precision.describe()}: {why}"
