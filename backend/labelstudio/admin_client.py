"""Driving a Label Studio 1.23.2 server from outside: how to start it headless, and the REST calls
an administrator makes (projects, file import, users through the signup form, ML backends,
predictions). Used by `aesemo stack` and by the end-to-end harness (tests/e2e/ls_server.py).

The settings and calls are the ones of docs/developers/label-studio-protocol.md
(sections 2, 3, 9, 11).
Every call sends `Authorization: Token <legacy token>`, so the server must run with legacy
tokens enabled (`LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true` before its first start).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from venv import EnvBuilder

import requests

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


def local_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # never route 127.0.0.1 traffic through a proxy
    return session


def is_up(session: requests.Session, url: str) -> bool:
    """`GET /health/` answers `{"status": "UP"}`."""
    try:
        r = session.get(f"{url}/health/", timeout=2)
        return r.status_code == 200 and r.json().get("status") == "UP"
    except (requests.RequestException, ValueError):
        return False


# ---------------------------------------------------------------------- users

def signup_user(url: str, email: str, password: str, timeout: float = 60.0) -> str:
    """Create a user through the signup form (the REST API cannot set a password) and return that
    user's legacy API token. The user joins the (single) organization."""
    s = local_session()
    try:
        signup = f"{url}/user/signup/"
        page = s.get(signup, timeout=timeout)
        page.raise_for_status()
        m = re.search(r'name="csrfmiddlewaretoken"\s+value="([^"]+)"', page.text)
        csrf = m.group(1) if m else s.cookies.get("csrftoken")
        if not csrf:
            raise LabelStudioError("signup_user: no CSRF token on /user/signup/")
        r = s.post(signup, data={"csrfmiddlewaretoken": csrf, "email": email, "password": password},
                   headers={"Referer": signup}, allow_redirects=False, timeout=timeout)
        if r.status_code != 302:
            errors = re.findall(r'class="[^"]*error[^"]*"[^>]*>([^<]+)<', r.text)
            raise LabelStudioError(
                f"signup_user({email}): expected 302, got {r.status_code}; form errors: {errors or r.text[:500]}",
                status=r.status_code, body=r.text)
        t = s.get(f"{url}/api/current-user/token", timeout=timeout)
        if t.status_code != 200:
            raise LabelStudioError(
                f"signup_user({email}): GET /api/current-user/token -> {t.status_code}: {t.text[:500]}",
                status=t.status_code, body=t.text)
        return t.json()["token"]
    finally:
        s.close()


# ---------------------------------------------------------------------- REST calls

class LabelStudioClient:
    """Thin REST helpers with `Authorization: Token <token>`; raise LabelStudioError on non-2xx."""

    def __init__(self, url: str, token: str, request_timeout: float = 60.0):
        self._url = url.rstrip("/")
        self.token = token
        self.request_timeout = request_timeout
        self.session = local_session()

    @property
    def url(self) -> str:
        return self._url

    def api(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> requests.Response:
        """`requests` call to `url + path` with `Authorization: Token <token or the client's token>`.

        Raises LabelStudioError (with status and body) on a non-2xx reply; returns the Response.
        `path` may also be an absolute URL (e.g. an image URL from a task): the token goes with
        it only when it is on this server (label_studio_auth's rule, as for the backend's own
        requests), since a task's URL may point anywhere.
        """
        url = path if path.startswith("http") else f"{self.url}{path}"
        headers = dict(kwargs.pop("headers", None) or {})
        sent = ls_auth.token_for(url, ls_auth.label_studios(self.url, token or self.token))
        if sent:
            headers.setdefault("Authorization", f"Token {sent}")
        kwargs.setdefault("timeout", self.request_timeout)
        r = self.session.request(method, url, headers=headers, **kwargs)
        if not 200 <= r.status_code < 300:
            body = r.text
            raise LabelStudioError(f"{method} {path} -> {r.status_code} {r.reason}: {body[:2000]}",
                                   status=r.status_code, body=body)
        return r

    def api_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """`api()` and the decoded JSON body (None for an empty body)."""
        r = self.api(method, path, **kwargs)
        return r.json() if r.content else None

    # projects, tasks

    def create_project(self, title: str, label_config: str, **extra: Any) -> dict:
        return self.api_json("POST", "/api/projects", json={"title": title, "label_config": label_config, **extra})

    def project(self, project_id: int) -> dict:
        return self.api_json("GET", f"/api/projects/{project_id}")

    def update_project(self, project_id: int, **fields: Any) -> dict:
        return self.api_json("PATCH", f"/api/projects/{project_id}", json=fields)

    def import_files(self, project_id: int, paths: Iterable[str | os.PathLike]) -> dict:
        """Multipart upload, one task per file. Field names are f1, f2, ... (a repeated name keeps
        only the last file). Returns LS's reply, e.g. `{"task_count": 2, "file_upload_ids": [...]}`."""
        handles = []
        try:
            files = {}
            for i, p in enumerate(paths, 1):
                p = Path(p)
                fh = open(p, "rb")
                handles.append(fh)
                files[f"f{i}"] = (p.name, fh)
            if not files:
                raise ValueError("import_files: no paths given")
            return self.api_json("POST", f"/api/projects/{project_id}/import", files=files)
        finally:
            for fh in handles:
                fh.close()

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> dict:
        """Import JSON tasks. Each item is a task's `data` dict (wrapped as `{"data": item}`),
        unless it already has a `data` key, in which case it is sent as is."""
        body = [dict(t) if "data" in t else {"data": dict(t)} for t in tasks]
        return self.api_json("POST", f"/api/projects/{project_id}/import", json=body)

    def tasks(self, project_id: int, page_size: int = 100) -> list[dict]:
        """All tasks of a project (GET /api/tasks?project=P, every page)."""
        out: list[dict] = []
        page = 1
        while True:
            body = self.api_json("GET", "/api/tasks",
                                 params={"project": project_id, "page": page, "page_size": page_size})
            if isinstance(body, list):  # unpaginated shape, just in case
                return body
            batch = body.get("tasks", [])
            out.extend(batch)
            if not batch or len(out) >= body.get("total", 0):
                return out
            page += 1

    def task(self, task_id: int, token: str | None = None) -> dict:
        """GET /api/tasks/{id}. Note: this may make LS ask a connected ML backend for a prediction."""
        return self.api_json("GET", f"/api/tasks/{task_id}", token=token)

    def download(self, url_or_path: str, token: str | None = None) -> requests.Response:
        """GET a file LS serves (`/data/upload/...`, `/data/local-files/?d=...`) with the token."""
        return self.api("GET", url_or_path, token=token)

    # ML backends, predictions

    def connect_ml_backend(self, project_id: int, url: str, title: str = "aesemo",
                           basic_auth: tuple[str, str] | None = None, **extra: Any) -> dict:
        """POST /api/ml. LS calls the backend's /health and /setup before answering (400 if they fail).
        Also auto-creates the project webhook `<url>/webhook`."""
        body: dict[str, Any] = {"url": url, "project": project_id, "title": title, "is_interactive": False}
        if basic_auth is not None:
            body.update(auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1])
        body.update(extra)
        return self.api_json("POST", "/api/ml", json=body)

    def ml_backends(self, project_id: int) -> list[dict]:
        return self.api_json("GET", "/api/ml", params={"project": project_id})

    def webhooks(self, project_id: int) -> list[dict]:
        return self.api_json("GET", "/api/webhooks", params={"project": project_id})

    def retrieve_predictions(self, project_id: int, task_ids: Iterable[int] | None = None) -> dict:
        """Data Manager action "Retrieve Predictions" for `task_ids` (None: all tasks).
        LS answers `{"processed_items": N, "detail": "Retrieved N predictions"}` even when the backend failed."""
        if task_ids is None:
            selected: dict[str, Any] = {"all": True, "excluded": []}
        else:
            selected = {"all": False, "included": [int(t) for t in task_ids]}
        return self.api_json("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions",
                                                                "project": project_id},
                             json={"selectedItems": selected})

    def predictions(self, task_id: int) -> list[dict]:
        """Every prediction stored for a task (GET /api/predictions?task=T)."""
        return self.api_json("GET", "/api/predictions", params={"task": task_id})

    # users, annotations

    def signup_user(self, email: str, password: str) -> str:
        """Create a user through the signup form; returns that user's legacy API token."""
        return signup_user(self.url, email, password, self.request_timeout)

    def users(self) -> list[dict]:
        """The organization's users (GET /api/users/): `id`, `email`, ..."""
        return self.api_json("GET", "/api/users/")

    def whoami(self, token: str | None = None) -> dict:
        """The user a token belongs to (GET /api/current-user/whoami): `id`, `email`, ..."""
        return self.api_json("GET", "/api/current-user/whoami", token=token)

    def create_annotation(self, task_id: int, result: list[dict], token: str | None = None, **extra: Any) -> dict:
        """POST /api/tasks/{id}/annotations as the token's user (default: the client's)."""
        return self.api_json("POST", f"/api/tasks/{task_id}/annotations", token=token,
                             json={"result": result, **extra})

    def annotations(self, task_id: int) -> list[dict]:
        return self.api_json("GET", f"/api/tasks/{task_id}/annotations")

