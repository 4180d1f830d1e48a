"""Full resync: every annotation of a project from Label Studio's export, through
label-studio-sdk, rebuilds the votes (labels made while the backend was down, or whose
webhook was lost, come back)."""
from __future__ import annotations

import json
import logging

from label_studio_sdk import LabelStudio

from backend.labelstudio import tokens as ls_auth
from backend.core.errors import Conflict, DomainError, NotFound, UpstreamError
from backend.core.ids import as_id, shown
from backend.fetch.address_guard import AddressGuard, allowed_host_entries, guarded_httpx_client
from backend.fetch.errors import ImageFetchError
from backend.labelstudio.label_config import ProjectLabels
from backend.votes.project_consensus import ProjectConsensus
from backend.labelstudio.projects import ProjectContext
from backend.core.settings import Settings
from backend.votes.store import Vote, vote_from_annotation

log = logging.getLogger(__name__)


def project_studio(settings: Settings, context: ProjectContext) -> ls_auth.Studio | None:
    """The Label Studio the project's API calls go to, with its token (label_studio_auth's rule)."""
    try:
        return ls_auth.primary(ls_auth.label_studios(settings.label_studio_url, settings.label_studio_api_key,
                                                     context.hostname, context.access_token))
    except ValueError:
        return None


def sdk_client(settings: Settings, studio: ls_auth.Studio, timeout_s: float) -> LabelStudio:
    """The SDK's client for `studio`. LABEL_STUDIO_URL is the operator's and used as it is; a
    /setup hostname is held to the image downloads' address rules (backend/fetch/address_guard.py) on every
    connection, so naming an internal service in /setup cannot make the backend call it.
    Conflict when refused: before any connection, whether anything listens there or not."""
    if not ls_auth.is_http_url(studio.base):
        raise Conflict(f"Label Studio's address {shown(studio.base)} is not an http(s) URL: set LABEL_STUDIO_URL, "
                       "or connect the project again")
    base = studio.base.rstrip("/")
    if studio.configured:
        return LabelStudio(base_url=base, api_key=studio.token, timeout=timeout_s)
    guard = AddressGuard(allowed_host_entries(settings), {})
    try:
        guard.check(base)
    except ImageFetchError as exc:
        raise _refused(exc) from None
    return LabelStudio(base_url=base, api_key=studio.token, timeout=timeout_s, follow_redirects=False,
                       httpx_client=guarded_httpx_client(guard, base, timeout_s))


def _refused(exc: ImageFetchError) -> Conflict:
    return Conflict(f"Label Studio's address from /setup was refused: {exc.problem}")


def _sdk_failure(exc: Exception, what: str) -> UpstreamError:
    """An SDK failure as an answer: the guard's refusal as such (it may surface from inside the
    SDK, on a connection to a host that resolved differently), anything else as a 502."""
    if isinstance(exc, ImageFetchError):
        return _refused(exc)
    status = getattr(exc, "status_code", None)
    return UpstreamError(what + (f" with HTTP {status}" if status else f": {type(exc).__name__}"))


def export_tasks(client: LabelStudio, project: str) -> list[dict]:
    """All tasks of a project with their annotations (Label Studio's JSON export). The SDK
    takes a legacy token or a personal access token (it refreshes the latter itself)."""
    chunks = client.projects.exports.download_sync(int(project), export_type="JSON", download_all_tasks=True)
    return json.loads(b"".join(chunks))


def fetch_label_config(settings: Settings, studio: ls_auth.Studio, project: str) -> str:
    """The label config of a project this backend has never heard of. Label Studio's 404 means
    it does not know the project either: that is the client's unknown project (404), not
    Label Studio failing (502, which other errors stay: its word on the project is missing)."""
    client = sdk_client(settings, studio, 30)
    try:
        return client.projects.get(int(project)).label_config
    except Exception as exc:  # the SDK's ApiError or a transport error
        if getattr(exc, "status_code", None) == 404:
            raise NotFound(f"unknown project {project}: neither this backend nor its Label Studio knows it") from None
        raise _sdk_failure(exc, f"Label Studio has no readable project {project}") from None


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
        raise _sdk_failure(exc, f"Label Studio export of project {project} failed") from None
    votes, images, problems = votes_from_export(tasks, labels)
    counts = consensus.votes.replace_all(project, votes, images)
    log.info("resync of project %s: %s", project, counts)
    return {**counts, "tasks": len(tasks), "votes": len(votes), "problems": problems}
