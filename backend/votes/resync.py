"""Full resync: every annotation of a project from Label Studio's export, through
label-studio-sdk, rebuilds the votes (labels made while the backend was down, or whose
webhook was lost, come back)."""
from __future__ import annotations

import json
import logging

from label_studio_sdk import LabelStudio

from backend.fetch import tokens as ls_auth
from backend.core.errors import Conflict, DomainError
from backend.core.ids import as_id
from backend.labelstudio.label_config import ProjectLabels
from backend.votes.project_consensus import ProjectConsensus
from backend.labelstudio.client import sdk_client, sdk_failure
from backend.core.settings import Settings
from backend.votes.store import Vote, vote_from_annotation

log = logging.getLogger(__name__)


def export_tasks(client: LabelStudio, project: str) -> list[dict]:
    """All tasks of a project with their annotations (Label Studio's JSON export). The SDK
    takes a legacy token or a personal access token (it refreshes the latter itself)."""
    chunks = client.projects.exports.download_sync(int(project), export_type="JSON", download_all_tasks=True)
    return json.loads(b"".join(chunks))


def votes_from_export(tasks: list[dict], labels: ProjectLabels) -> tuple[list[Vote], dict[int, str], list[str]]:
    votes, images, problems = [], {}, []
    for task in tasks:
        if not isinstance(task, dict) or as_id(task.get("id")) is None:
            problems.append(f"a task without a valid id ({type(task).__name__})")
            continue
        image = labels.image_url(task)
        if image is not None:
            images[task["id"]] = image
        for annotation in task.get("annotations") or []:
            try:
                votes.append(vote_from_annotation(annotation, task["id"], labels))
            except DomainError as exc:
                problems.append(f"task {task.get('id')}: {exc}")
    return votes, images, problems


def resync(consensus: ProjectConsensus, project: str, labels: ProjectLabels, settings: Settings,
           studio: ls_auth.Studio | None, timeout_s: float = 300) -> dict:
    if studio is None or not studio.token:
        raise Conflict(f"cannot resync project {project}: no Label Studio address or token "
                       "(set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, or connect the project so /setup "
                       "sends them)")
    client = sdk_client(settings, studio, timeout_s)
    try:
        tasks = export_tasks(client, project)
    except Exception as exc:  # the SDK raises its own ApiError, httpx errors, JSON errors
        raise sdk_failure(exc, f"Label Studio export of project {project} failed") from None
    votes, images, problems = votes_from_export(tasks, labels)
    counts = consensus.votes.replace_all(project, votes, images)
    log.info("resync of project %s: %s", project, counts)
    return {**counts, "tasks": len(tasks), "votes": len(votes), "problems": problems}
