"""Which version serves a project: the listing, promotion, rollback to the base, and the
prediction refresh that follows every change (and that an admin may ask for)."""
from __future__ import annotations

import redis

from backend.core.errors import InvalidInput
from backend.core.settings import Settings
from backend.labelstudio.follow import VersionFollower
from backend.serving.load_priority import LoadPriority
from backend.serving.refresh_queue import cancel_refresh, refresh_jobs, submit_refresh, try_submit_refresh
from backend.serving.registry import describe_base, project_versions, promote_version, roll_back_to_base
from backend.serving.retention import kept_reasons, pinned, set_pinned
from backend.services.projects import Projects


class VersionService:
    def __init__(self, settings: Settings, client: redis.Redis, projects: Projects, follower: VersionFollower,
                 priority: LoadPriority | None = None):
        self.settings, self.redis, self.projects, self.follower = settings, client, projects, follower
        # the promotion's check loads the version: this process's predictions wait for it too
        self.priority = priority or LoadPriority()

    def project_versions(self, project: str) -> dict:
        current = self.projects.version_ref(project, self.projects.project_labels(project)).name
        listed, skipped = project_versions(self.settings, project)
        kept = kept_reasons(self.settings, self.redis, project, [v["version"] for v in listed])
        pins = pinned(self.redis, project)
        versions = [{**v, "current": v["version"] == current, "pinned": v["version"] in pins, "kept": kept[v["version"]]}
                    for v in listed]
        return {"project": project, "current": current, "versions": versions, "skipped": skipped,
                "base_model": describe_base(self.redis, self.settings), "keep_versions": self.settings.keep_versions}

    def pin(self, project: str, version: str, pin: bool) -> dict:
        """Pin a version (retention never deletes it) or unpin it."""
        self.projects.project_labels(project)
        return set_pinned(self.redis, self.settings, project, version, pin)

    def promote(self, project: str, version: str) -> dict:
        """Make `version` current and refresh the unlabelled tasks' predictions."""
        with self.priority.loading():
            answer = promote_version(self.redis, self.settings, project, version)
        return self._serving_changed(project, version, answer, f"promotion of {version}")

    def roll_back(self, project: str, body) -> dict:
        """Serve the project's base again (the registered base model, or the untrained base),
        when the body confirms it."""
        require_confirmation(body)
        classes = self.projects.project_labels(project).classes()
        with self.priority.loading():
            answer = roll_back_to_base(self.redis, self.settings, project, classes)
        return self._serving_changed(project, answer["current"], answer, "rollback to the base")

    def _serving_changed(self, project: str, version: str, answer: dict, reason: str) -> dict:
        """Label Studio sorts by the new version's scores, and its unlabelled tasks get its predictions."""
        self.follower.on_setup(self.projects.store.get(project), version)
        return {**answer, "refresh": try_submit_refresh(self.settings, project, reason)}

    def refresh(self, project: str) -> dict:
        """Queue a refresh of the unlabelled tasks' predictions (or merge into the pending one)."""
        self.projects.project_labels(project)
        return submit_refresh(self.settings, project, "admin")

    def refresh_jobs(self, project: str) -> dict:
        return {"project": project, "jobs": refresh_jobs(self.settings, project)}

    def cancel_refresh(self, project: str, job_id: str) -> dict:
        return cancel_refresh(self.settings, project, job_id)


def require_confirmation(body) -> None:
    """A rollback serves another model to every annotator at once: the caller says it meant it."""
    if not (isinstance(body, dict) and body.get("confirm") is True):
        raise InvalidInput("\"confirm\": true is required in the JSON body: this changes the version "
                           "every annotator's suggestions come from")
