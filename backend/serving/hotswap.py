"""Each serving process's current model per project, swapped without a restart.

A promotion publishes a notice on Redis; a listener thread here loads the new version off the
request path (the Predictor checks the weights' hash), then replaces one dict entry. Requests
already running keep the Predictor object they took, so they finish on the old model. A
poller re-reads the pointers now and then, in case a notice was lost. A version that fails to
load is refused with a log line and the old one keeps serving; it is tried again once its files
change (repaired) or RETRY_REFUSED_S later. With Redis down, requests are still served from the
models in memory.
"""
from __future__ import annotations

import json
import logging
import threading
import time

import redis

from model.errors import AesemoError
from model.predictor import Predictor

from backend.core import keys
from backend.serving.registry import current_version_name, project_versions_dir

log = logging.getLogger(__name__)

RETRY_REFUSED_S = 300.0


class HotSwap:
    def __init__(self, settings, client: redis.Redis):
        self.settings = settings
        self.redis = client
        self._current: dict[str, tuple[str, Predictor]] = {}
        # (project, version) -> its files' state and when it was refused: retried once the files
        # change (a repaired version) or a while later (a failure that was not the files' fault)
        self._refused: dict[tuple[str, str], tuple[tuple, float]] = {}
        self._lock = threading.Lock()
        # one load at a time: the listener and the poller must not load the same version twice,
        # nor the poller finish loading a pointer read before a later promotion and undo it
        self._swap_lock = threading.RLock()
        self._started = False

    def get(self, project: str) -> tuple[str, Predictor] | None:
        self._start()
        return self._current.get(project)

    def remember(self, project: str, name: str, predictor: Predictor) -> None:
        self._start()
        self._current[project] = (name, predictor)

    def swap_to(self, project: str, name: str) -> bool:
        """Load `name` and make it current for `project`; False (old one kept) if it fails."""
        with self._swap_lock:
            held = self._current.get(project)
            folder = project_versions_dir(self.settings, project) / name
            if held and held[0] == name or self._still_refused(project, name, folder):
                return False
            try:
                predictor = Predictor(folder, max_pixels=self.settings.max_image_pixels)
            except (AesemoError, OSError, RuntimeError, ValueError) as exc:
                self._refused[(project, name)] = (_files_state(folder), time.monotonic())
                log.error("refused model version %s of project %s: %s; still serving %s",
                          name, project, exc, held[0] if held else "nothing")
                return False
            self._refused.pop((project, name), None)
            self._current[project] = (name, predictor)  # one reference: in-flight requests keep theirs
            log.info("project %s now serves model version %s", project, name)
            return True

    def _still_refused(self, project: str, name: str, folder) -> bool:
        refused = self._refused.get((project, name))
        return refused is not None and refused[0] == _files_state(folder) \
            and time.monotonic() - refused[1] < RETRY_REFUSED_S

    def _start(self) -> None:
        if self._started:
            return
        with self._lock:
            if self._started:
                return
            self._started = True
            threading.Thread(target=self._listen, name="swap-listener", daemon=True).start()
            threading.Thread(target=self._poll, name="swap-poller", daemon=True).start()

    def _listen(self) -> None:
        failures = 0
        while True:
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(keys.VERSION_CHANNEL)
                failures = 0
                for message in pubsub.listen():
                    notice = json.loads(message["data"])
                    if notice.get("project") in self._current:
                        self.swap_to(notice["project"], notice["version"])
            except (redis.RedisError, OSError, ValueError) as exc:
                failures += 1
                if failures == 1:  # once per outage; the poller covers the gap
                    log.warning("swap notices interrupted (%s); retrying", type(exc).__name__)
                time.sleep(min(1.0 * failures, 30.0))

    def _poll(self) -> None:
        while True:
            time.sleep(self.settings.swap_poll_s)
            for project in list(self._current):
                with self._swap_lock:  # the pointer is read and loaded before any later notice
                    try:
                        name = current_version_name(self.redis, project)
                    except redis.RedisError:
                        break
                    if name and name != self._current[project][0]:
                        self.swap_to(project, name)


def _files_state(folder) -> tuple:
    """Name, size and modification time of each file of a version folder: any repair changes it."""
    try:
        return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))
    except OSError:
        return ()
