"""A project's consensus as the admin sees it: the summary, the tasks in each state with the
annotators' names, the policy, a resync from Label Studio's export, and snapshots of the agreed
labels (training manifests)."""
from __future__ import annotations

from backend.core.settings import Settings
from backend.labelstudio.client import fetch_label_config, project_studio
from backend.labelstudio.users import AnnotatorNames, annotator_ids, name_summary, name_tasks, task_voters
from backend.services.projects import Projects
from backend.votes.project_consensus import ProjectConsensus
from backend.votes.resync import resync


class ConsensusService:
    def __init__(self, settings: Settings, projects: Projects, consensus: ProjectConsensus,
                 annotator_names: AnnotatorNames):
        self.settings, self.projects, self.consensus = settings, projects, consensus
        self.annotator_names = annotator_names

    def summary(self, project: str) -> dict:
        summary = self.consensus.summary(project, self.projects.project_labels(project))
        return name_summary(summary, self._names(project, annotator_ids(summary)))

    def tasks(self, project: str, state: str) -> dict:
        tasks = self.consensus.tasks_in_state(project, self.projects.project_labels(project), state)
        names = self._names(project, set().union(*map(task_voters, tasks)))
        return {"project": project, "state": state, "tasks": name_tasks(tasks, names)}

    def overview(self, project: str, state: str = "disputed") -> tuple[dict, list[dict]]:
        """The summary and the tasks in `state`, from one computation of the consensus, with the
        annotators' names (one lookup for both)."""
        labels = self.projects.project_labels(project)
        result = self.consensus.consensus(project, labels)
        summary = self.consensus.summary(project, labels, result)
        tasks = self.consensus.tasks_in_state(project, labels, state, result)
        names = self._names(project, annotator_ids(summary).union(*map(task_voters, tasks)))
        return name_summary(summary, names), name_tasks(tasks, names)

    def _names(self, project: str, users: set[int]) -> dict[int, str]:
        """Label Studio's name for each user id (Redis cache), "user N" when it cannot say."""
        return self.annotator_names.names(self.projects.store.get(project), users) if users else {}

    def set_policy(self, project: str, body) -> dict:
        self.projects.project_labels(project)
        return {"project": project, "policy": self.consensus.set_policy(project, body).to_dict()}

    def resync(self, project: str) -> dict:
        context = self.projects.store.get(project)
        studio = project_studio(self.settings, context)
        if not context.label_config and studio and studio.token:
            # a project the backend never heard of: its label config comes from Label Studio too
            self.projects.store.remember_label_config(project, fetch_label_config(self.settings, studio, project))
        return resync(self.consensus, project, self.projects.project_labels(project), self.settings, studio)

    def snapshot(self, project: str) -> dict:
        labels = self.projects.project_labels(project)
        synced = self.resync(project) if self.settings.resync_before_snapshot else None
        return {**self.consensus.snapshot(project, labels), "resync": synced}
