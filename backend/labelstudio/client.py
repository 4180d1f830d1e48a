"""The Label Studio API client, made one way for every caller: label-studio-sdk's `LabelStudio`,
pointed at the project's Label Studio with the token its rule allows (backend/fetch/tokens.py),
and held to the address guard when the address came from /setup rather than from the operator.
"""
from __future__ import annotations

from label_studio_sdk import LabelStudio

from backend.core.errors import Conflict, NotFound, UpstreamError
from backend.core.ids import shown
from backend.core.settings import Settings
from backend.fetch import tokens as ls_auth
from backend.fetch.address_guard import AddressGuard, allowed_host_entries, guarded_httpx_client
from backend.fetch.errors import ImageFetchError
from backend.labelstudio.projects import ProjectContext


def project_studio(settings: Settings, context: ProjectContext) -> ls_auth.Studio | None:
    """The Label Studio the project's API calls go to, with its token (backend/fetch/tokens.py's rule)."""
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


def sdk_failure(exc: Exception, what: str) -> UpstreamError:
    """An SDK failure as an answer: the guard's refusal as such (it may surface from inside the
    SDK, on a connection to a host that resolved differently), anything else as a 502."""
    if isinstance(exc, ImageFetchError):
        return _refused(exc)
    status = getattr(exc, "status_code", None)
    return UpstreamError(what + (f" with HTTP {status}" if status else f": {type(exc).__name__}"))


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
        raise sdk_failure(exc, f"Label Studio has no readable project {project}") from None
