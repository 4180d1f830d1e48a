"""Annotators by name: Label Studio's users API, read with the project's token, cached in Redis.

Votes carry only Label Studio's user id (`completed_by`); people know each other by name or email.
The names are fetched from `GET /api/users/` (every member of the organisation, one request,
unpaginated in Label Studio 1.23) with the token and address rules of every other Label Studio
call (backend/fetch/tokens.py, the address guard for a /setup hostname), and kept per
project for NAMES_TTL_S, so the admin page and the consensus JSON cost no Label Studio call on
most reads. When Label Studio cannot be reached (or refuses), the page still renders: the
annotator is "user N", and Label Studio is not asked again for RETRY_AFTER_S, so a down Label
Studio does not add its timeout to every page load.
"""
from __future__ import annotations

import logging

import redis

from backend.core import keys
from backend.core.errors import DomainError
from backend.core.ids import as_id
from backend.labelstudio.projects import ProjectContext
from backend.labelstudio.client import project_studio, sdk_client

log = logging.getLogger(__name__)

NAMES_TTL_S = 600        # a renamed or new user shows within ten minutes
RETRY_AFTER_S = 60       # after a fetch, found or not: at most one users call a minute per project
FETCH_TIMEOUT_S = 5.0    # the admin page waits at most this long for Label Studio
MAX_NAME_CHARS = 80


def fallback_name(user: int) -> str:
    return f"user {user}"


def display_name(user) -> str | None:
    """"First Last", else the email, else the username of a Label Studio user; control characters
    dropped (the name reaches terminals and logs as well as the page, which escapes it)."""
    full = " ".join(p for p in (getattr(user, "first_name", None), getattr(user, "last_name", None)) if p)
    for candidate in (full, getattr(user, "email", None), getattr(user, "username", None)):
        if isinstance(candidate, str):
            clean = "".join(c for c in candidate if c.isprintable()).strip()
            if clean:
                return clean[:MAX_NAME_CHARS]
    return None


def fetch_names(settings, context: ProjectContext) -> dict[int, str]:
    """Every user Label Studio lists for the project's token, by id. DomainError or the SDK's
    own errors when it cannot be asked or does not answer."""
    studio = project_studio(settings, context)
    if studio is None or not studio.token:
        raise DomainError("no Label Studio address or token for this project")
    users = sdk_client(settings, studio, FETCH_TIMEOUT_S).users.list()
    names = {}
    for user in users:
        user_id, name = as_id(getattr(user, "id", None)), display_name(user)
        if user_id is not None and name:
            names[user_id] = name
    return names


class AnnotatorNames:
    """The names of a project's annotators, from the Redis cache or Label Studio."""

    def __init__(self, client: redis.Redis, settings):
        self.redis = client
        self.settings = settings

    def names(self, context: ProjectContext, users) -> dict[int, str]:
        """A name for each of `users` (ids): Label Studio's, else "user N". Never raises for
        Label Studio's sake; Redis errors pass through like everywhere else."""
        wanted = sorted({int(u) for u in users})
        known = self._cached(context.project)
        if any(u not in known for u in wanted) and self._may_ask(context.project):
            known = {**known, **self._refresh(context)}
        return {u: known.get(u, fallback_name(u)) for u in wanted}

    def _cached(self, project: str) -> dict[int, str]:
        stored = self.redis.hgetall(keys.annotator_names(project))
        return {int(k): v for k, v in stored.items() if k.isascii() and k.isdigit()}

    def _may_ask(self, project: str) -> bool:
        """True for one caller a RETRY_AFTER_S (SET NX): concurrent page loads ask once."""
        return bool(self.redis.set(keys.annotator_names_retry(project), "1", nx=True, ex=RETRY_AFTER_S))

    def _refresh(self, context: ProjectContext) -> dict[int, str]:
        try:
            names = fetch_names(self.settings, context)
        except Exception as exc:  # the SDK's ApiError, httpx's errors, the guard's refusal
            log.warning("project %s: annotator names from Label Studio unavailable (%s); showing user ids",
                        context.project, type(exc).__name__)
            return {}
        if names:
            key = keys.annotator_names(context.project)
            pipe = self.redis.pipeline()
            pipe.delete(key)
            pipe.hset(key, mapping={str(k): v for k, v in names.items()})
            pipe.expire(key, NAMES_TTL_S)
            pipe.execute()
        return names


def annotator_ids(summary: dict) -> set[int]:
    """The user ids a consensus summary names (its per-dimension `annotators`)."""
    return {int(a) for d in summary.values() if isinstance(d, dict) for a in d.get("annotators") or {}}


def name_summary(summary: dict, names: dict[int, str]) -> dict:
    """The summary with a `name` beside each annotator's numbers (the id stays the key)."""
    for dimension in summary.values():
        if isinstance(dimension, dict):
            for user, numbers in (dimension.get("annotators") or {}).items():
                numbers["name"] = names.get(int(user), fallback_name(int(user)))
    return summary


def task_voters(task: dict) -> set[int]:
    """The user ids that voted on a task entry of `tasks_in_state`."""
    return {int(u) for c in task.values() if isinstance(c, dict) for u in c.get("votes") or {}}


def name_tasks(tasks: list[dict], names: dict[int, str]) -> list[dict]:
    """Each task entry with `annotators`: the name of every user id its votes name."""
    for task in tasks:
        task["annotators"] = {str(u): names.get(u, fallback_name(u)) for u in sorted(task_voters(task))}
    return tasks
