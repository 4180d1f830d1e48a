"""Retention: a project keeps its newest AESEMO_KEEP_VERSIONS trained versions (0: all); the current
one, the deployment's base and every version an admin pinned stay whatever their age. A training
job applies it once its version is published; older versions are deleted from the version store
(the data directory, or the object store and this host's copy).

A version some process is fetching or loading is never deleted: retention marks the version first,
then looks for leases (backend/serving/version_cache.py), while a loader leases first and then looks
for the mark; pinning follows the same order against the mark. Each skipped version is tried again
at the next job.
"""
from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import redis

from backend.core import keys
from backend.core.errors import Conflict, NotFound
from backend.serving.registry import current_version_name, is_published, registered_base
from backend.serving.version_cache import LEASE_S, leased, local_folder
from backend.serving.version_store import version_store

log = logging.getLogger(__name__)


def pinned(client: redis.Redis, project: str) -> set[str]:
    return set(client.smembers(keys.pinned_versions(project)))


def set_pinned(client: redis.Redis, settings, project: str, name: str, pin: bool) -> dict:
    """Pin a version (retention keeps it) or unpin it; NotFound for a version the project lacks."""
    if pin and not is_published(settings, project, name):
        raise NotFound(f"project {project} has no version {name!r}")
    if not pin:
        client.srem(keys.pinned_versions(project), name)
        return {"project": project, "version": name, "pinned": False}
    client.sadd(keys.pinned_versions(project), name)
    if client.exists(keys.version_deleting(project, name)):  # retention got there first
        client.srem(keys.pinned_versions(project), name)
        raise Conflict(f"version {name} of project {project} is being deleted (retention); not pinned")
    return {"project": project, "version": name, "pinned": True}


def _number(name: str) -> tuple[int, str]:
    match = re.match(r"v(\d+)", name)
    return (int(match.group(1)) if match else -1, name)


def kept_reasons(settings, client: redis.Redis, project: str, names: list[str]) -> dict[str, str | None]:
    """Why each version stays ("current", "pinned", "base", "newest N"), None for one that the next
    retention deletes."""
    keep = settings.keep_versions
    newest = set(sorted(names, key=_number)[-keep:]) if keep else set(names)
    current, pins, base = current_version_name(client, project), pinned(client, project), _base_folder(client, settings)
    reasons = {}
    for name in names:
        if name == current:
            reasons[name] = "current"
        elif name in pins:
            reasons[name] = "pinned"
        elif base is not None and local_folder(settings, project, name).resolve() == base:
            reasons[name] = "base"
        elif name in newest:
            reasons[name] = f"newest {keep}" if keep else "every version is kept"
        else:
            reasons[name] = None
    return reasons


def _base_folder(client: redis.Redis, settings) -> Path | None:
    ref, _ = registered_base(client, settings)
    return ref.folder.resolve() if ref is not None else None


def apply_retention(settings, client: redis.Redis, project: str) -> dict:
    """Delete the versions `kept_reasons` does not keep; returns those removed, and those left
    because a process was loading them."""
    if not settings.keep_versions:
        return {"removed": [], "busy": []}
    store = version_store(settings)
    names = store.names(project)
    removed, busy = [], []
    for name, reason in kept_reasons(settings, client, project, names).items():
        if reason is not None:
            continue
        if _delete(settings, client, store, project, name):
            removed.append(name)
        else:
            busy.append(name)
    if removed or busy:
        log.info("project %s: retention (AESEMO_KEEP_VERSIONS=%d) removed %s; kept while in use: %s", project,
                 settings.keep_versions, ", ".join(removed) or "none", ", ".join(busy) or "none")
    return {"removed": removed, "busy": busy}


def _delete(settings, client: redis.Redis, store, project: str, name: str) -> bool:
    """Mark, then check for leases, a pin or a promotion made meanwhile; delete when none."""
    mark = keys.version_deleting(project, name)
    client.set(mark, "1", ex=LEASE_S)
    try:
        if leased(client, project, name) or name == current_version_name(client, project) \
                or name in pinned(client, project):
            return False
        store.delete(project, name)
        if store.shared:  # this host's copy
            shutil.rmtree(local_folder(settings, project, name), ignore_errors=True)
        client.delete(keys.predictions(project, name))
        return True
    finally:
        client.delete(mark)
