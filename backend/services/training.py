"""Training jobs as the admin and Label Studio ask for them: queued only for a project with
enough agreed labels, listed, described and cancelled."""
from __future__ import annotations

import logging

from backend.core.errors import Conflict, DomainError, NotFound
from backend.core.settings import Settings
from backend.services.projects import Projects
from backend.training.queue import cancel_job, check_params, get_job, project_jobs, record_refusal, submit_training
from backend.votes.project_consensus import ProjectConsensus

log = logging.getLogger(__name__)


class TrainingService:
    def __init__(self, settings: Settings, projects: Projects, consensus: ProjectConsensus):
        self.settings, self.projects, self.consensus = settings, projects, consensus

    def train(self, project: str, params, reason: str = "admin") -> dict:
        """Queue a training job (or merge into the pending one) if the project has enough
        consensus labels; Conflict otherwise, and no job. Bad parameters are refused
        (400) first, whatever the project's state."""
        params = check_params(params)
        try:
            labels = self.projects.project_labels(project)
            agreed = self.consensus.agreed_task_count(project, labels)
            if agreed < self.settings.min_training_labels:
                raise Conflict(f"project {project} has {agreed} consensus-labelled tasks; training needs at least "
                               f"{self.settings.min_training_labels} (AESEMO_MIN_TRAINING_LABELS)")
        except (Conflict, NotFound) as exc:
            if reason != "auto":  # auto-training asks after every few labels: its refusals are logged
                record_refusal(self.settings, project, reason, str(exc))
            raise
        queued = submit_training(self.settings, project, reason, params)
        return {**queued, "job": queued["job_id"]}

    def auto_train(self, project: str) -> None:
        try:
            self.train(project, {}, "auto")
        except DomainError as exc:
            log.info("auto-training of project %s not started: %s", project, exc)

    def jobs(self, project: str) -> dict:
        return {"project": project, "jobs": project_jobs(self.settings, project)}

    def job(self, project: str, job_id: str) -> dict:
        return get_job(self.settings, project, job_id)

    def cancel(self, project: str, job_id: str) -> dict:
        return cancel_job(self.settings, project, job_id)


def training_refused(exc: DomainError) -> dict:
    """Why Label Studio's training request started no job, for a 200 answer: an error status would
    put the backend into Label Studio's error state, which stops its predictions."""
    return {"started": False, "refused": True, "error": str(exc)}
