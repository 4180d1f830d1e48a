"""Keep a Label Studio project sorting by the version the backend serves (data_manager.py), and
give it the "Least certain first" tab, once per connected project and served version.

Triggered by /setup, which Label Studio sends on connecting and before every prediction request
(so also soon after each promotion); the calls back into Label Studio run on a thread of their
own, after a pause: Label Studio stores a new ML backend only after its /setup answered, and
its PATCH of an ML backend calls /setup again.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any
from collections.abc import Callable

import redis

from backend.core import keys
from backend.core.settings import Settings
from backend.labelstudio.data_manager import Api, ensure_least_certain_view, follow_served_version
from backend.labelstudio.projects import ProjectContext
from backend.labelstudio.client import project_studio, sdk_client

log = logging.getLogger(__name__)

# seconds before each try: Label Studio saves the backend record after /setup answers
TRY_DELAYS_S = (2.0, 5.0, 15.0)
LOCK_S = 300
REQUEST_TIMEOUT_S = 30.0


def sdk_api(settings: Settings, context: ProjectContext) -> Api | None:
    """JSON calls to the project's Label Studio with the token we hold (the SDK's client, so a
    personal access token is refreshed and a /setup hostname is held to the address rules);
    None when we hold no token for it."""
    studio = project_studio(settings, context)
    if studio is None or not studio.token:
        return None
    http = sdk_client(settings, studio, REQUEST_TIMEOUT_S)._client_wrapper.httpx_client

    def call(method: str, path: str, **kwargs: Any) -> Any:
        response = http.request(path, method=method, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None
    return call


def sync_project(api: Api, project: str, version: str, basic_auth: tuple[str, str] | None = None) -> bool | None:
    """The tab, then the version: see `follow_served_version`."""
    ensure_least_certain_view(api, int(project))
    return follow_served_version(api, int(project), version, basic_auth)


class VersionFollower:
    def __init__(self, settings: Settings, client: redis.Redis,
                 make_api: Callable[[Settings, ProjectContext], Api | None] = sdk_api,
                 delays_s: tuple[float, ...] = TRY_DELAYS_S):
        self.settings = settings
        self.redis = client
        self.make_api = make_api
        self.delays_s = delays_s

    def on_setup(self, context: ProjectContext, version: str) -> threading.Thread | None:
        """Start the sync unless it is off, Label Studio was found sorting by `version` less than
        AESEMO_LS_RECHECK seconds ago (a reconnected backend is titled anew within that time), or
        a sync is under way. Returns the thread (tests wait on it)."""
        if not self._claim(context.project, version):
            return None
        thread = threading.Thread(target=self._run, args=(context, version), daemon=True,
                                  name=f"ls-follow-{context.project}")
        thread.start()
        return thread

    def sync_now(self, context: ProjectContext, version: str) -> None:
        """The same sync in the caller's thread: a refresh job makes Label Studio sort by the
        version it is about to write before writing it (a promotion by a training worker reaches
        Label Studio no other way until its next /setup)."""
        if self._claim(context.project, version):
            self._run(context, version)

    def _claim(self, project: str, version: str) -> bool:
        if not self.settings.ls_recheck_s:
            return False
        if self.redis.get(keys.ls_followed(project)) == version:
            return False
        return bool(self.redis.set(keys.ls_follow_lock(project), version, nx=True, ex=LOCK_S))

    def _basic_auth(self) -> tuple[str, str] | None:
        if not self.settings.basic_auth_user:
            return None
        return self.settings.basic_auth_user, self.settings.basic_auth_pass or ""

    def _run(self, context: ProjectContext, version: str) -> None:
        try:
            api = self.make_api(self.settings, context)
            if api is None:
                log.info("project %s: no Label Studio token held, its Data Manager is not set up to sort "
                         "by %s", context.project, version)
                return
            for delay in self.delays_s:
                time.sleep(delay)
                sorts = sync_project(api, context.project, version, self._basic_auth())
                if sorts is not None:
                    if not sorts:
                        log.info("project %s: Label Studio shows the predictions of a model version chosen "
                                 "by hand, not %s's; left so", context.project, version)
                    self.redis.set(keys.ls_followed(context.project), version,
                                   ex=max(1, round(self.settings.ls_recheck_s)))
                    return
            log.warning("project %s: no ML backend of Label Studio's project serves %s yet; tried again on a "
                        "later /setup", context.project, version)
        except Exception as exc:  # any failure of Label Studio's API: the next /setup tries again
            log.warning("project %s: setting Label Studio's Data Manager up for %s failed: %s",
                        context.project, version, exc)
        finally:
            try:
                self.redis.delete(keys.ls_follow_lock(context.project))
            except redis.RedisError:
                pass  # the lock expires by itself (LOCK_S)
