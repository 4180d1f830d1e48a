"""Driving a Label Studio 1.23.2 server from outside: how to start it headless, and the API calls
an administrator makes (projects, imports, users, ML backends, predictions, annotations). Used by
`aesemo stack` and by the end-to-end harness (tests/e2e/ls_server.py).

The settings and calls are the ones of docs/developers/label-studio-protocol.md (sections 2, 3, 9, 11).
The server must run with legacy tokens enabled (`LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true`
before its first start): the admin and the annotators act with legacy tokens.

One Label Studio client: every API call goes through label-studio-sdk's `LabelStudio`, as in the
service (backend/labelstudio/client.py), and answers Label Studio's JSON as plain dicts and lists
(the SDK's models dumped back: equal to the raw replies of 1.23.2 for every call here). Each token
gets an SDK client of its own, so an annotator acts as themselves, with their own session cookies.
Written by hand, because the SDK has no call for them:

* starting the server process (`label-studio start`, its virtualenv and environment);
* `signup_user`: Label Studio's REST API cannot set a password, so users sign up through the HTML
  form (CSRF token and session cookie), as a person would;
* `import_files`: the SDK's import sends JSON only, not the multipart upload of files;
* `download`: a file by URL (a task's image), whose token follows backend/fetch/tokens.py's rule
  (the token goes only to this server, since a task's URL may point anywhere);
* `api` / `api_json`: an escape hatch for the few paths the SDK lacks (`/api/projects/{id}/next`,
  `/api/projects/{id}/model-versions`).

All of them use the SDK's HTTP stack, httpx: the escape hatch, the multipart import and a download
from this server go through the very client the SDK holds for that token (its base URL, its
Authorization header, its timeout). A download from anywhere else gets a client of its own, with
no token and no cookies: Label Studio answers token calls with a session cookie, and cookies do
not tell ports apart, so the SDK's client would hand it to any other server on the same host.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from venv import EnvBuilder

import httpx
import pydantic
from label_studio_sdk import (LabelStudio, PrepareParamsRequestRequestSelectedItemsExcluded,
                               PrepareParamsRequestRequestSelectedItemsIncluded)
from label_studio_sdk.core.api_error import ApiError

from backend.fetch import tokens as ls_auth

LS_VERSION = "1.23.2"

# Variables of the calling environment that must not leak into Label Studio's interpreter.
SCRUB_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE", "PYTHONSTARTUP")


class LabelStudioError(RuntimeError):
    """Label Studio failed to start, died, or answered an API call with a non-2xx status."""

    def __init__(self, message: str, status: int | None = None, body: str | None = None):
        super().__init__(message)
        self.status = status
        self.body = body


# ---------------------------------------------------------------------- the server process

def ensure_ls_venv(venv: Path) -> Path:
    """Make sure `venv` holds Label Studio LS_VERSION: a virtualenv of its own (it pins its own
    Django, SDK and requests, about 1 GB), made with this interpreter and pip when missing
    (about a minute, needs the package registry). Progress goes to stderr."""
    venv = Path(venv)
    stamp = venv / f".label-studio-{LS_VERSION}-installed"
    if stamp.is_file() and (venv / "bin" / "label-studio").is_file():
        return venv
    if not (venv / "bin" / "python").is_file():
        print(f"creating {venv} for Label Studio {LS_VERSION}", file=sys.stderr)
        EnvBuilder(with_pip=True).create(venv)
    print(f"installing label-studio=={LS_VERSION} into {venv} (about a minute)", file=sys.stderr)
    for step in (["-m", "pip", "install", "--quiet", "--upgrade", "pip"],
                 ["-m", "pip", "install", "--quiet", f"label-studio=={LS_VERSION}"], ["-c", "import label_studio"]):
        env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV}
        if subprocess.run([str(venv / "bin" / "python"), *step], stdout=sys.stderr, env=env).returncode != 0:
            raise LabelStudioError(f"installing Label Studio into {venv} failed at: python {' '.join(step)}")
    if not (venv / "bin" / "label-studio").is_file():
        raise LabelStudioError(f"{venv}/bin/label-studio missing after installing label-studio=={LS_VERSION}")
    stamp.write_text(LS_VERSION + "\n")
    return venv


def label_studio_environment(venv: Path, data_dir: Path, files_dir: Path, username: str, password: str,
                             token: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a headless server (Label Studio protocol notes, section 2) that talks to nothing outside
    127.0.0.1: no PyPI version check at start, no Sentry, no analytics."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in SCRUB_ENV}
    env["PATH"] = f"{Path(venv) / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        COLLECT_ANALYTICS="false",
        LABEL_STUDIO_USERNAME=username,
        LABEL_STUDIO_PASSWORD=password,
        LABEL_STUDIO_USER_TOKEN=token,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        ML_BLOCK_LOCAL_IP="false",
        SSRF_PROTECTION_ENABLED="false",
        LOCAL_FILES_SERVING_ENABLED="true",
        LOCAL_FILES_DOCUMENT_ROOT=str(files_dir),
        LATEST_VERSION_CHECK="false",
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
    )
    return env


def label_studio_command(venv: Path, port: int, log_level: str = "INFO") -> list[str]:
    """`label-studio start` bound to 127.0.0.1:port, announcing that address as its host (the
    `hostname` /setup sends the backend)."""
    return [
        str(Path(venv) / "bin" / "label-studio"), "start",
        "--no-browser",
        "--internal-host", "127.0.0.1",
        "--port", str(port),
        "--host", f"http://127.0.0.1:{port}",
        "--log-level", log_level,
    ]  # fmt: skip


def port_moved(log_path: Path, offset: int, port: int) -> bool:
    """label-studio silently moves to port+1 when its port is busy ("Port N is in use"), which
    would leave its host (what /setup sends as hostname) pointing at the wrong port."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            return f"Port {port} is in use".encode() in f.read()
    except OSError:
        return False


def local_session(timeout: float | None = None) -> httpx.Client:
    """An httpx client for 127.0.0.1 traffic: never through a proxy from the environment."""
    return httpx.Client(trust_env=False, follow_redirects=True, timeout=timeout)


def is_up(session: httpx.Client, url: str) -> bool:
    """`GET /health/` answers `{"status": "UP"}`."""
    try:
        r = session.get(f"{url}/health/", timeout=2)
        return r.status_code == 200 and r.json().get("status") == "UP"
    except (httpx.HTTPError, ValueError):
        return False


# ---------------------------------------------------------------------- users

def signup_user(url: str, email: str, password: str, timeout: float = 60.0) -> str:
    """Create a user through the signup form (the REST API cannot set a password) and return that
    user's legacy API token. The user joins the (single) organization."""
    signup = f"{url}/user/signup/"
    with local_session(timeout) as s, _transport_errors(f"signup_user({email})"):
        page = s.get(signup)
        if page.status_code != 200:
            raise _status_error(f"signup_user({email}): GET /user/signup/", page.status_code, page.text)
        m = re.search(r'name="csrfmiddlewaretoken"\s+value="([^"]+)"', page.text)
        csrf = m.group(1) if m else s.cookies.get("csrftoken")
        if not csrf:
            raise LabelStudioError("signup_user: no CSRF token on /user/signup/")
        r = s.post(signup, data={"csrfmiddlewaretoken": csrf, "email": email, "password": password},
                   headers={"Referer": signup}, follow_redirects=False)
        if r.status_code != 302:
            errors = re.findall(r'class="[^"]*error[^"]*"[^>]*>([^<]+)<', r.text)
            raise LabelStudioError(
                f"signup_user({email}): expected 302, got {r.status_code}; form errors: {errors or r.text[:500]}",
                status=r.status_code, body=r.text)
        t = s.get(f"{url}/api/current-user/token")
        if t.status_code != 200:
            raise _status_error(f"signup_user({email}): GET /api/current-user/token", t.status_code, t.text)
        return t.json()["token"]


# ---------------------------------------------------------------------- errors

def _status_error(what: str, status: int | None, body: Any) -> LabelStudioError:
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    return LabelStudioError(f"{what} -> {status}: {text[:2000]}", status=status, body=text)


@contextmanager
def _transport_errors(what: str) -> Iterator[None]:
    """A connection that failed or timed out as a LabelStudioError without a status."""
    try:
        yield
    except httpx.HTTPError as exc:
        raise LabelStudioError(f"{what}: {type(exc).__name__}: {exc}") from exc


@contextmanager
def _answers(what: str) -> Iterator[None]:
    """The SDK's ApiError (any non-2xx reply) as a LabelStudioError with the status and body.
    Not chained: the ApiError's text holds the reply's headers, Set-Cookie's session among them."""
    with _transport_errors(what):
        try:
            yield
        except ApiError as exc:
            raise _status_error(what, exc.status_code, exc.body) from None


def _plain(value: Any) -> Any:
    """The SDK's models as the JSON Label Studio sent (dicts and lists)."""
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value.model_dump(mode="json") if isinstance(value, pydantic.BaseModel) else value


# ---------------------------------------------------------------------- API calls

class LabelStudioClient:
    """Label Studio's API through label-studio-sdk as the token's user (the client's token unless a
    call names another); raises LabelStudioError on a non-2xx reply or a failed connection."""

    def __init__(self, url: str, token: str, request_timeout: float = 60.0):
        self._url = url.rstrip("/")
        self.token = token
        self.request_timeout = request_timeout
        self._sdk_clients: dict[tuple[str, str, float], LabelStudio] = {}
        self._sdk_lock = threading.Lock()

    @property
    def url(self) -> str:
        return self._url

    def sdk(self, token: str | None = None) -> LabelStudio:
        """The SDK client that acts as `token`'s user (default: the client's), made once per token.
        It never retries: a POST Label Studio answered with a 5xx may have been carried out (a
        repeated import or annotation would be a duplicate)."""
        # request_timeout is in the key: a caller may raise it for one slow call (a long action)
        key = (self.url, token or self.token, self.request_timeout)
        with self._sdk_lock:
            client = self._sdk_clients.get(key)
            if client is None:
                url, api_key, timeout = key
                client = LabelStudio(base_url=url, api_key=api_key, timeout=timeout, max_retries=0,
                                     httpx_client=local_session(timeout))
                self._sdk_clients[key] = client
            return client

    def close(self) -> None:
        with self._sdk_lock:
            clients, self._sdk_clients = list(self._sdk_clients.values()), {}
        for client in clients:
            _http(client).httpx_client.close()

    # the escape hatch, and files

    def api(self, method: str, path: str, *, token: str | None = None, params: Mapping[str, Any] | None = None,
            json: Any = None, files: Mapping[str, Any] | None = None) -> httpx.Response:
        """`method path` (a path on this server, for what the SDK has no call for) as the token's
        user, through that token's SDK client. Raises LabelStudioError on a non-2xx reply."""
        what = f"{method} {path}"
        with _transport_errors(what):
            r = _http(self.sdk(token)).request(path, method=method, params=dict(params or {}), json=json,
                                               files=dict(files) if files else None)
        return _checked(what, r)

    def api_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """`api()` and the decoded JSON body (None for an empty body)."""
        r = self.api(method, path, **kwargs)
        return r.json() if r.content else None

    def download(self, url_or_path: str, token: str | None = None) -> httpx.Response:
        """GET a file LS serves (`/data/upload/...`, `/data/local-files/?d=...`), or any URL a task
        names. The token goes with it only when it is on this server (backend/fetch/tokens.py's
        rule, as for the backend's own downloads), since a task's URL may point anywhere."""
        url = url_or_path if url_or_path.startswith(("http://", "https://")) else f"{self.url}{url_or_path}"
        what = f"GET {url_or_path}"
        if ls_auth.token_for(url, ls_auth.label_studios(self.url, token or self.token)):
            with _transport_errors(what):  # the SDK client's own Authorization header
                r = _http(self.sdk(token)).request(None, method="GET", base_url=url)
        else:
            # no token, and not the SDK's client: it holds Label Studio's session cookie (module docstring)
            with local_session(self.request_timeout) as s, _transport_errors(what):
                r = s.get(url)
        return _checked(what, r)

    # projects, tasks

    def create_project(self, title: str, label_config: str, **extra: Any) -> dict:
        with _answers(f"create_project({title!r})"):
            return _plain(self.sdk().projects.create(title=title, label_config=label_config, **extra))

    def project(self, project_id: int) -> dict:
        with _answers(f"project({project_id})"):
            return _plain(self.sdk().projects.get(project_id))

    def update_project(self, project_id: int, **fields: Any) -> dict:
        with _answers(f"update_project({project_id})"):
            return _plain(self.sdk().projects.update(project_id, **fields))

    def import_files(self, project_id: int, paths: Iterable[str | os.PathLike]) -> dict:
        """Multipart upload, one task per file (the SDK's import sends JSON only). Field names are
        f1, f2, ... (a repeated name keeps only the last file). Returns LS's reply, e.g.
        `{"task_count": 2, "file_upload_ids": [...]}`."""
        with ExitStack() as stack:
            files = {f"f{i}": (Path(p).name, stack.enter_context(open(p, "rb"))) for i, p in enumerate(paths, 1)}
            if not files:
                raise ValueError("import_files: no paths given")
            return self.api_json("POST", f"/api/projects/{project_id}/import", files=files)

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> dict:
        """Import JSON tasks. Each item is a task's `data` dict (wrapped as `{"data": item}`),
        unless it already has a `data` key, in which case it is sent as is."""
        body = [dict(t) if "data" in t else {"data": dict(t)} for t in tasks]
        with _answers(f"import_tasks({project_id})"):
            return _plain(self.sdk().projects.import_tasks(project_id, request=body))

    def tasks(self, project_id: int, page_size: int = 100, *, view: int | None = None,
              fields: str = "task_only") -> list[dict]:
        """All tasks of a project, every page, in the order of `view` when given. `fields="all"`
        adds each task's annotations and predictions."""
        out: list[dict] = []
        with _answers(f"tasks({project_id})"):
            for page in range(1, 1 + 1_000_000 // page_size + 1):  # bounded: far beyond any test project
                pager = self.sdk().tasks.list(project=project_id, view=view, page=page, page_size=page_size,
                                              fields=fields)
                batch = _plain(list(pager.items or []))
                out.extend(batch)
                if not batch or len(out) >= (pager.response.total or 0):
                    break
        return out

    def task(self, task_id: int, token: str | None = None) -> dict:
        """GET /api/tasks/{id}. Note: this may make LS ask a connected ML backend for a prediction."""
        with _answers(f"task({task_id})"):
            return _plain(self.sdk(token).tasks.get(str(task_id)))

    def views(self, project_id: int) -> list[dict]:
        """The project's Data Manager tabs."""
        with _answers(f"views({project_id})"):
            return _plain(self.sdk().views.list(project=project_id))

    def export(self, project_id: int) -> list[dict]:
        """The project's JSON export (its annotated tasks, with their annotations)."""
        with _answers(f"export({project_id})"):
            content = b"".join(self.sdk().projects.exports.download_sync(project_id, export_type="JSON"))
        return json.loads(content)

    # ML backends, predictions

    def connect_ml_backend(self, project_id: int, url: str, title: str = "aesemo",
                           basic_auth: tuple[str, str] | None = None, **extra: Any) -> dict:
        """LS calls the backend's /health and /setup before answering (400 if they fail).
        Also auto-creates the project webhook `<url>/webhook`."""
        if basic_auth is not None:
            extra = dict(auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1],
                         **extra)
        with _answers(f"connect_ml_backend({project_id}, {url})"):
            return _plain(self.sdk().ml.create(project=project_id, url=url, title=title,
                                               **{"is_interactive": False, **extra}))

    def ml_backends(self, project_id: int) -> list[dict]:
        with _answers(f"ml_backends({project_id})"):
            return _plain(self.sdk().ml.list(project=project_id))

    def ml_backend(self, ml_id: int) -> dict:
        with _answers(f"ml_backend({ml_id})"):
            return _plain(self.sdk().ml.get(ml_id))

    def disconnect_ml_backend(self, ml_id: int) -> None:
        """Remove the connection (the webhook LS made for it stays)."""
        with _answers(f"disconnect_ml_backend({ml_id})"):
            self.sdk().ml.delete(ml_id)

    def start_training(self, ml_id: int) -> None:
        """The model settings' Start Training: LS sends the backend a START_TRAINING webhook."""
        with _answers(f"start_training({ml_id})"):
            self.sdk().ml.train(ml_id)

    def webhooks(self, project_id: int) -> list[dict]:
        with _answers(f"webhooks({project_id})"):
            return _plain(self.sdk().webhooks.list(project=str(project_id)))

    def delete_webhook(self, webhook_id: int) -> None:
        with _answers(f"delete_webhook({webhook_id})"):
            self.sdk().webhooks.delete(webhook_id)

    def retrieve_predictions(self, project_id: int, task_ids: Iterable[int] | None = None) -> dict:
        """Data Manager action "Retrieve Predictions" for `task_ids` (None: all tasks).
        LS answers `{"processed_items": N, "detail": "Retrieved N predictions"}` even when the backend failed."""
        if task_ids is None:
            selected: Any = PrepareParamsRequestRequestSelectedItemsExcluded(all_=True, excluded=[])
        else:
            selected = PrepareParamsRequestRequestSelectedItemsIncluded(all_=False, included=[int(t) for t in task_ids])
        with _answers(f"retrieve_predictions({project_id})"):
            # the SDK's call returns None: its raw form keeps LS's answer
            reply = self.sdk().actions.with_raw_response.create(id="retrieve_tasks_predictions", project=project_id,
                                                                selected_items=selected)
            return reply.response.json()

    def predictions(self, task_id: int) -> list[dict]:
        """Every prediction stored for a task."""
        with _answers(f"predictions({task_id})"):
            return _plain(self.sdk().predictions.list(task=task_id))

    # users, annotations

    def signup_user(self, email: str, password: str) -> str:
        """Create a user through the signup form; returns that user's legacy API token."""
        return signup_user(self.url, email, password, self.request_timeout)

    def users(self) -> list[dict]:
        """The organization's users: `id`, `email`, ..."""
        with _answers("users()"):
            return _plain(self.sdk().users.list())

    def whoami(self, token: str | None = None) -> dict:
        """The user a token belongs to: `id`, `email`, ..."""
        with _answers("whoami()"):
            return _plain(self.sdk(token).users.whoami())

    def create_annotation(self, task_id: int, result: list[dict], token: str | None = None, **extra: Any) -> dict:
        """An annotation of the task by the token's user (default: the client's). A skip is
        `create_annotation(task, [], was_cancelled=True)`."""
        with _answers(f"create_annotation({task_id})"):
            return _plain(self.sdk(token).annotations.create(task_id, result=result, **extra))

    def update_annotation(self, annotation_id: int, result: list[dict], token: str | None = None) -> dict:
        with _answers(f"update_annotation({annotation_id})"):
            return _plain(self.sdk(token).annotations.update(annotation_id, result=result))

    def delete_annotation(self, annotation_id: int, token: str | None = None) -> None:
        with _answers(f"delete_annotation({annotation_id})"):
            self.sdk(token).annotations.delete(annotation_id)

    def annotations(self, task_id: int) -> list[dict]:
        with _answers(f"annotations({task_id})"):
            return _plain(self.sdk().annotations.list(task_id))


def _http(client: LabelStudio):
    """The SDK's HTTP client (its base URL, headers with the token, timeout) for the calls the SDK
    has no method for. `_client_wrapper` is not public; label-studio-sdk 2.x has no other handle."""
    return client._client_wrapper.httpx_client


def _checked(what: str, r: httpx.Response) -> httpx.Response:
    if not 200 <= r.status_code < 300:
        raise _status_error(f"{what} ({r.reason_phrase})", r.status_code, r.text)
    return r
