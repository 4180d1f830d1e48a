"""Full resync: every annotation of a project from Label Studio's export, through
label-studio-sdk, rebuilds the votes (labels made while the backend was down, or whose
webhook was lost, come back)."""
from __future__ import annotations

import json
import logging

from label_studio_sdk import LabelStudio

from .errors import RequestError
from .label_config import ProjectLabels
from .project_consensus import ProjectConsensus
from .votes import Vote, vote_from_annotation

log = logging.getLogger(__name__)


def export_tasks(base_url: str, token: str, project: str, timeout_s: float = 300) -> list[dict]:
    """All tasks of a project with their annotations (Label Studio's JSON export). The SDK
    takes a legacy token or a personal access token (it refreshes the latter itself)."""
    client = LabelStudio(base_url=base_url.rstrip("/"), api_key=token, timeout=timeout_s)
    chunks = client.projects.exports.download_sync(int(project), export_type="JSON", download_all_tasks=True)
    return json.loads(b"".join(chunks))


def fetch_label_config(base_url: str, token: str, project: str) -> str:
    client = LabelStudio(base_url=base_url.rstrip("/"), api_key=token, timeout=30)
    try:
        return client.projects.get(int(project)).label_config
    except Exception as exc:  # the SDK's ApiError or a transport error
        status = getattr(exc, "status_code", None)
        raise RequestError(f"Label Studio has no readable project {project}"
                           + (f" (HTTP {status})" if status else f" ({type(exc).__name__})"), status=502) from None


def votes_from_export(tasks: list[dict], labels: ProjectLabels) -> tuple[list[Vote], dict[int, str], list[str]]:
    votes, images, problems = [], {}, []
    for task in tasks:
        image = (task.get("data") or {}).get(labels.image_key)
        if isinstance(image, str):
            images[task["id"]] = image
        for annotation in task.get("annotations") or []:
            try:
                votes.append(vote_from_annotation(annotation, task["id"], labels))
            except RequestError as exc:
                problems.append(f"task {task.get('id')}: {exc}")
    return votes, images, problems


def resync(consensus: ProjectConsensus, project: str, labels: ProjectLabels, base_url: str | None,
           token: str | None) -> dict:
    if not base_url or not token:
        raise RequestError(f"cannot resync project {project}: no Label Studio address or token "
                           "(set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, or connect the project so /setup "
                           "sends them)", status=409)
    try:
        tasks = export_tasks(base_url, token, project)
    except Exception as exc:  # the SDK raises its own ApiError, httpx errors, JSON errors
        status = getattr(exc, "status_code", None)
        raise RequestError(f"Label Studio export of project {project} failed"
                           + (f" with HTTP {status}" if status else f": {type(exc).__name__}"), status=502) from None
    votes, images, problems = votes_from_export(tasks, labels)
    counts = consensus.votes.replace_all(project, votes, images)
    log.info("resync of project %s: %s", project, counts)
    return {**counts, "tasks": len(tasks), "votes": len(votes), "problems": problems}
