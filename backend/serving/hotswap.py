"""Each serving process's current model per project, swapped without a restart.

A promotion publishes a notice on Redis; a listener thread here loads the new version off the
request path (the Predictor checks the weights' hash), then replaces one dict entry. Requests
already running keep the ServedModel they took, so they finish on the old model; predictions that
start during a load wait for it (`priority`, backend/serving/load_priority.py), so that the load
does not share the CPU with them, then answer from the new one. A poller
re-reads the pointers now and then, in case a notice was lost. A version that fails to load is
refused with a log line and the old one keeps serving; it is tried again once its files change
(repaired) or RETRY_REFUSED_S later. With Redis down, requests are still served from the models
in memory. The two threads run from `start` (the app factory) to `stop`, or to the interpreter's
exit, which stops every running one first.
"""
from __future__ import annotations

import atexit
import json
import logging
import threading
import time
import weakref
from contextlib import contextmanager
from pathlib import Path

import redis

from model.errors import AesemoError

from backend.core import keys
from backend.core.errors import NotFound, Unavailable
from backend.serving.load_priority import LoadPriority
from backend.serving.models import ModelCache, ServedModel
from backend.serving.registry import VersionRef, base_for, current_version_name, project_versions_dir
from backend.serving.version_cache import local_version, version_lease

log = logging.getLogger(__name__)

RETRY_REFUSED_S = 300.0
# how long the listener waits for a notice before it looks whether it should stop
LISTEN_WAKE_S = 1.0
# the HotSwaps whose threads run, for the exit hook below
_RUNNING: weakref.WeakSet[HotSwap] = weakref.WeakSet()


class HotSwap:
    def __init__(self, settings, client: redis.Redis, models: ModelCache):
        self.settings = settings
        self.redis = client
        self.models = models
        self._current: dict[str, ServedModel] = {}
        # (project, version) -> its files' state and when it was refused: retried once the files
        # change (a repaired version) or a while later (a failure that was not the files' fault)
        self._refused: dict[tuple[str, str], tuple[tuple, float]] = {}
        # one load at a time: the listener and the poller must not load the same version twice,
        # nor the poller finish loading a pointer read before a later promotion and undo it
        self._swap_lock = threading.RLock()
        self.priority = LoadPriority()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def get(self, project: str) -> ServedModel | None:
        return self._current.get(project)

    def serve(self, project: str, version: VersionRef) -> ServedModel | None:
        """The project's model once `version` is current; None if it cannot be loaded."""
        held = self._current.get(project)
        if not (held and held.version == version.name):
            self.swap_to(project, version.name, version.folder)
        return self._current.get(project)

    def swap_to(self, project: str, name: str, folder: Path | None = None) -> bool:
        """Load `name` (from the project's versions unless `folder` says otherwise) and make it
        current for `project`; False (old one kept) if it fails."""
        with self._swap_lock:
            held = self._current.get(project)
            own = project_versions_dir(self.settings, project) / name
            folder = folder or own
            if held and held.version == name or self._still_refused(project, name, folder):
                return False
            try:
                with self._copy_on_this_host(project, name, folder, folder == own) as local, \
                        self.priority.loading():  # predictions wait for the load, not for a download
                    served = self.models.load(VersionRef(name, local))
                    self._make_current(project, served, held)
            except (AesemoError, OSError, RuntimeError, ValueError) as exc:
                if not isinstance(exc, (Unavailable, NotFound)):  # not the version's fault: retried at the next poll
                    self._refused[(project, name)] = (_files_state(folder), time.monotonic())
                log.error("refused model version %s of project %s: %s; still serving %s",
                          name, project, exc, held.version if held else "nothing")
                return False
            log.info("project %s now serves model version %s", project, name)
            return True

    def _make_current(self, project: str, served: ServedModel, held: ServedModel | None) -> None:
        """Inside the load's priority: a prediction that waited for the load finds the new model."""
        self._refused.pop((project, served.version), None)
        self._current[project] = served  # one reference: in-flight requests keep theirs
        if held and all(m.folder != held.folder for m in self._current.values()):
            self.models.forget(held.folder)

    @contextmanager
    def _copy_on_this_host(self, project: str, name: str, folder: Path, trained: bool):
        """The folder to load from: a project's own version is leased while it is fetched (from
        the store, when there is one) and loaded, so retention leaves it; a base is never deleted."""
        if not trained:
            yield folder
            return
        with version_lease(self.redis, project, name):
            yield local_version(self.settings, self.redis, project, name)

    def _still_refused(self, project: str, name: str, folder) -> bool:
        refused = self._refused.get((project, name))
        return refused is not None and refused[0] == _files_state(folder) \
            and time.monotonic() - refused[1] < RETRY_REFUSED_S

    def start(self) -> None:
        if self._threads:
            return
        self._stopping.clear()
        self._threads = [threading.Thread(target=self._listen, name="swap-listener", daemon=True),
                         threading.Thread(target=self._poll, name="swap-poller", daemon=True)]
        for thread in self._threads:
            thread.start()
        _RUNNING.add(self)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads = []
        _RUNNING.discard(self)

    def _listen(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                try:
                    pubsub.subscribe(keys.VERSION_CHANNEL)
                    failures = 0
                    self._take_notices(pubsub)
                finally:
                    pubsub.close()
            except (redis.RedisError, OSError, ValueError) as exc:
                failures += 1
                if failures == 1:  # once per outage; the poller covers the gap
                    log.warning("swap notices interrupted (%s); retrying", type(exc).__name__)
                self._stopping.wait(min(1.0 * failures, 30.0))

    def _take_notices(self, pubsub) -> None:
        while not self._stopping.is_set():
            message = pubsub.get_message(timeout=LISTEN_WAKE_S)
            if message is None:
                continue
            notice = json.loads(message["data"])
            if notice.get("project") in self._current:
                # a base's notice names its folder: it is none of the project's versions
                folder = Path(notice["folder"]) if notice.get("folder") else None
                self.swap_to(notice["project"], notice["version"], folder)

    def _poll(self) -> None:
        while not self._stopping.wait(self.settings.swap_poll_s):
            for project in list(self._current):
                with self._swap_lock:  # the pointer is read and loaded before any later notice
                    try:
                        name = current_version_name(self.redis, project)
                    except redis.RedisError:
                        break
                    if name and name != self._current[project].version:
                        self.swap_to(project, name)
                    elif not name:
                        self._back_to_base(project)


    def _back_to_base(self, project: str) -> None:
        """A project rolled back to its base while the notice was lost: its pointer is empty,
        yet this process still serves one of its trained versions."""
        held = self._current[project]
        if held.folder.parent != project_versions_dir(self.settings, project):
            return
        try:
            base = base_for(self.redis, self.settings, held.predictor.classes)
        except (AesemoError, OSError, redis.RedisError) as exc:
            log.warning("project %s: cannot find its base version: %s", project, exc)
            return
        self.swap_to(project, base.name, base.folder)


def _files_state(folder) -> tuple:
    """Name, size and modification time of each file of a version folder: any repair changes it."""
    try:
        return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))
    except OSError:
        return ()


@atexit.register
def stop_running_swaps(timeout_s: float = 2.0) -> None:
    """Stop every running HotSwap's threads before the interpreter tears down its native
    libraries: a daemon thread still inside torch or OpenVINO (a swap loading a version) would
    abort the process ("terminate called without an active exception", exit status 134). All are
    told first, so their waits overlap."""
    swaps = list(_RUNNING)
    for swap in swaps:
        swap._stopping.set()
    for swap in swaps:
        swap.stop(timeout_s)
