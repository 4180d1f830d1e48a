"""A project as the services see it: its /setup record, its label config parsed, and the version
it is served with. Every service reads projects through this one place."""
from __future__ import annotations

import redis

from backend.core.errors import DomainError, InvalidInput, NotFound, Unprocessable
from backend.core.settings import Settings
from backend.labelstudio.label_config import LabelConfigError, ProjectLabels, parse_label_config
from backend.labelstudio.projects import ProjectContext, ProjectStore
from backend.serving.registry import VersionRef, base_ref, current_version_name, project_versions_dir


class Projects:
    def __init__(self, settings: Settings, client: redis.Redis):
        self.settings, self.redis = settings, client
        self.store = ProjectStore(client)
        self._contexts: dict[str, ProjectContext] = {}  # the last record seen, for when Redis is down

    def labels(self, label_config: str | None) -> ProjectLabels:
        if not label_config:
            raise InvalidInput("no label config: send \"label_config\" or call /setup for this project first")
        try:
            return parse_label_config(label_config, self.settings.aesthetic_control, self.settings.emotion_control)
        except LabelConfigError as exc:
            raise Unprocessable(f"label config: {exc}") from None

    def project_labels(self, project: str, project_object=None) -> ProjectLabels:
        """The project's label config: what /setup stored, or what a webhook body carries (Label
        Studio sends the whole project, label_config included), which is then remembered."""
        sent = project_object.get("label_config") if isinstance(project_object, dict) else None
        stored = self.store.get(project).label_config
        if sent and sent != stored:
            labels = self.labels(sent)
            self.store.remember_label_config(project, sent)
            return labels
        if not stored:
            raise NotFound(f"unknown project {project}: no label config yet; connect the backend to the "
                           "project in Label Studio (it calls /setup), or resync it with LABEL_STUDIO_URL "
                           "and LABEL_STUDIO_API_KEY set")
        return self.labels(stored)

    def known_labels(self, project: str, project_object=None) -> ProjectLabels | None:
        """project_labels, or None for a project the backend cannot read labels for yet."""
        try:
            return self.project_labels(project, project_object)
        except DomainError:
            return None

    def context(self, project: str | None) -> ProjectContext | None:
        """The project's /setup data; the last one seen when Redis does not answer."""
        if not project:
            return None
        try:
            context = self.store.get(project)
            self._contexts[project] = context
            return context
        except redis.RedisError:
            return self._contexts.get(project)

    def remember_context(self, context: ProjectContext) -> None:
        """A /setup answered without Redis: its context serves this process's later /predict."""
        self._contexts[context.project] = context

    def version_ref(self, project: str, labels: ProjectLabels) -> VersionRef:
        """The project's current version, or the base version for its class lists (not written here)."""
        name = current_version_name(self.redis, project)
        if name:
            return VersionRef(name, project_versions_dir(self.settings, project) / name)
        return base_ref(self.redis, self.settings, labels.classes())
