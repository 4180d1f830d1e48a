"""Make Label Studio 1.23.2's Data Manager sort a project's tasks by our prediction scores.

The mechanism (label_studio/data_manager/managers.py, `annotate_predictions_score`): with the
default feature flags (`ff_front_dev_1682_model_version_dropdown_070622_short` is off in
feature_flags.json) a task's `predictions_score` is the mean `score` of its predictions whose
`model_version` equals the PROJECT's `model_version`; anything else is null. For a live backend
that field is the ML backend's title (ml/api.py `MLBackendListAPI.perform_create`), and it must
stay so for live predictions (projects/models.py `Project.should_retrieve_predictions`: title ==
model_version). So the backend renames its Label Studio ML backend to the version it serves:
`MLBackend.save` (ml/models.py) then moves the project's `model_version` along, our predictions
(which carry the version name) count, and the previous version's stop counting.
"""
from __future__ import annotations

import logging
from typing import Any
from collections.abc import Callable

log = logging.getLogger(__name__)

VIEW_TITLE = "Least certain first"
SCORE_COLUMN = "tasks:predictions_score"
# filters none, ordering by score ascending: low score = least certain (model/uncertainty.py)
LEAST_CERTAIN_VIEW = {"title": VIEW_TITLE, "ordering": [SCORE_COLUMN],
                      "filters": {"conjunction": "and", "items": []}}

# (method, path, json or params) -> decoded JSON; raises on a non-2xx answer
Api = Callable[..., Any]


def follow_served_version(api: Api, project: int, version: str,
                          basic_auth: tuple[str, str] | None = None) -> bool | None:
    """Title every ML backend of `project` that serves `version` (what its last /setup answered)
    with that name, and point the project at it unless the user chose stored predictions of
    another version. True when the project's scores now average `version`'s predictions, False
    when the user's choice was kept, None when no backend of the project serves it yet (Label
    Studio has not stored the backend).
    `basic_auth`: our BASIC_AUTH_USER/PASS, which Label Studio needs again to check the backend."""
    ours = [b for b in api("GET", "api/ml/", params={"project": project}) if b.get("model_version") == version]
    if not ours:
        return None
    for backend in ours:
        if backend.get("title") != version:
            # Label Studio calls /setup again while it saves: this must not run inside /setup
            api("PATCH", f"api/ml/{backend['id']}", json=_retitled(backend, project, version, basic_auth))
            log.info("project %s: ML backend %s titled %s (was %r)", project, backend["id"], version, backend.get("title"))
    current = api("GET", f"api/projects/{project}").get("model_version")
    if current != version and _follows_backend(api, project, current):
        api("PATCH", f"api/projects/{project}", json={"model_version": version})
        current = version
    return current == version


def _retitled(backend: dict, project: int, version: str, basic_auth: tuple[str, str] | None) -> dict:
    """A PATCH body Label Studio accepts: its serializer checks /health and /setup again on every
    update (ml/serializers.py `MLBackendSerializer.validate`), so it needs the url, the project
    and, for Basic auth, the credentials (it never returns the password)."""
    body = {"title": version, "url": backend["url"], "project": project}
    if backend.get("auth_method") == "BASIC_AUTH" and basic_auth:
        body.update(auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1])
    return body


def _follows_backend(api: Api, project: int, current: str | None) -> bool:
    """Whether the project's model_version names no stored predictions (empty, or a title such
    as "aesemo"): then it was meant to follow the live backend; a version the user picked among
    stored predictions is kept."""
    if not current:
        return True
    stored = api("GET", f"api/projects/{project}/model-versions/")
    return current not in (stored or ())


def ensure_least_certain_view(api: Api, project: int) -> bool:
    """Create the Data Manager tab "Least certain first" unless the project has a tab of that
    title (so reconnecting never duplicates it, and a tab the user edited is left alone).
    True when it was created."""
    views = api("GET", "api/dm/views/", params={"project": project})
    if any((view.get("data") or {}).get("title") == VIEW_TITLE for view in views):
        return False
    api("POST", "api/dm/views/", json={"project": project, "data": LEAST_CERTAIN_VIEW})
    log.info("project %s: Data Manager tab %r created", project, VIEW_TITLE)
    return True
