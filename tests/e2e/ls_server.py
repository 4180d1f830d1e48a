"""Start and drive a real Label Studio 1.23.2 server for end-to-end tests.

Plain Python (no pytest). Typical use::

    with LabelStudioServer(tmp_dir) as ls:
        project = ls.create_project("demo", LABEL_CONFIG)
        ls.import_files(project["id"], [png_path])
        ls.connect_ml_backend(project["id"], "http://127.0.0.1:9090")
        ls.retrieve_predictions(project["id"], [t["id"] for t in ls.tasks(project["id"])])

Label Studio lives in its own virtualenv, ``<repo>/.venv-ls`` (made by ``scripts/ls-venv.sh``
on first use, about a minute). The server binds to 127.0.0.1 on a free port, keeps its sqlite
database, uploads and log (``label-studio.log``) under ``data_dir``, and is started with the
settings from docs/label-studio-protocol.md section 2: legacy ``Token`` auth on, local ML
backends and webhooks allowed, local-files serving rooted at ``files_dir``. The PyPI version
check and Sentry reporting are switched off, so the server talks to nothing outside 127.0.0.1
(beyond what a test asks of it).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
LS_VERSION = "1.23.2"
DEFAULT_VENV = REPO_ROOT / ".venv-ls"
LS_VENV_SCRIPT = REPO_ROOT / "scripts" / "ls-venv.sh"

# Variables of the calling (test) environment that must not leak into Label Studio's interpreter.
_SCRUB_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE", "PYTHONSTARTUP")


class LabelStudioError(RuntimeError):
    """Label Studio failed to start, died, or answered an API call with a non-2xx status."""

    def __init__(self, message: str, status: int | None = None, body: str | None = None):
        super().__init__(message)
        self.status = status
        self.body = body


class _PortTaken(Exception):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ensure_ls_venv(venv: Path = DEFAULT_VENV) -> Path:
    """Make sure ``venv`` holds Label Studio (runs scripts/ls-venv.sh when it does not)."""
    stamp = venv / f".label-studio-{LS_VERSION}-installed"
    if stamp.is_file() and (venv / "bin" / "label-studio").is_file():
        return venv
    env = dict(os.environ, LS_VENV=str(venv))
    proc = subprocess.run(["bash", str(LS_VENV_SCRIPT)], env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise LabelStudioError(f"scripts/ls-venv.sh failed with exit code {proc.returncode}")
    return venv


class LabelStudioServer:
    """One Label Studio process on 127.0.0.1, plus thin REST helpers (``Authorization: Token``)."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        *,
        files_dir: str | os.PathLike | None = None,
        port: int | None = None,
        username: str = "admin@example.com",
        password: str | None = None,
        token: str | None = None,
        env: Mapping[str, str] | None = None,
        venv: str | os.PathLike | None = None,
        start_timeout: float = 180.0,
        request_timeout: float = 60.0,
        log_level: str = "INFO",
        db_template: bool | None = None,
    ):
        self.data_dir = Path(data_dir).resolve()
        self.files_dir = Path(files_dir).resolve() if files_dir else self.data_dir / "files"
        self.port = port
        self.username = username
        self.password = password or secrets.token_urlsafe(16)
        self.token = token or secrets.token_hex(20)  # legacy API token of the admin user
        self.extra_env = dict(env or {})
        self.venv = Path(venv) if venv else DEFAULT_VENV
        # A fresh database takes 25-100 s of migrations on 2 busy cores. The first fresh start
        # snapshots the just-migrated database (admin + org, nothing else) under the venv, and later
        # starts copy it in (5-15 s). Off when the caller chose the password or token, or when
        # AESEMO_LS_FRESH_DB=1.
        if db_template is None:
            db_template = password is None and token is None and os.environ.get("AESEMO_LS_FRESH_DB", "") in ("", "0")
        self.db_template = db_template
        self.template_dir = self.venv / "aesemo-db-template"
        self.used_template = False
        self.start_timeout = start_timeout
        self.request_timeout = request_timeout
        self.log_level = log_level
        self.log_path = self.data_dir / "label-studio.log"
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self._log_offset = 0
        self.session = requests.Session()
        self.session.trust_env = False  # never route 127.0.0.1 traffic through a proxy

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        if self.port is None:
            raise LabelStudioError("Label Studio has not been started")
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        """The environment the server process runs with."""
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB_ENV}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env.update(
            LABEL_STUDIO_BASE_DATA_DIR=str(self.data_dir),
            COLLECT_ANALYTICS="false",
            LABEL_STUDIO_USERNAME=self.username,
            LABEL_STUDIO_PASSWORD=self.password,
            LABEL_STUDIO_USER_TOKEN=self.token,
            LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
            ML_BLOCK_LOCAL_IP="false",
            SSRF_PROTECTION_ENABLED="false",
            LOCAL_FILES_SERVING_ENABLED="true",
            LOCAL_FILES_DOCUMENT_ROOT=str(self.files_dir),
            # Keep all traffic on 127.0.0.1: no PyPI "latest version" check at start, no Sentry.
            LATEST_VERSION_CHECK="false",
            SENTRY_DSN="",
            FRONTEND_SENTRY_DSN="",
        )
        env.update(self.extra_env)
        return env

    def start(self) -> "LabelStudioServer":
        """Start the server and block until ``GET /health/`` answers (or raise with the log tail)."""
        if self.running:
            return self
        ensure_ls_venv(self.venv)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.files_dir.mkdir(parents=True, exist_ok=True)
        auto_port = self.port is None
        db_path = self.data_dir / "label_studio.sqlite3"
        fresh_db = not db_path.exists()
        if self.db_template and fresh_db:
            self.used_template = self._copy_template(db_path)
        for attempt in range(3):
            if auto_port:
                self.port = free_port()
            try:
                self._launch()
                break
            except _PortTaken:
                if not auto_port or attempt == 2:
                    raise LabelStudioError(f"port {self.port} is in use\n{self.log_tail()}") from None
        if self.db_template and fresh_db and not self.used_template:
            self._save_template(db_path)
        return self

    def _launch(self) -> None:
        cmd = [
            str(self.venv / "bin" / "label-studio"), "start",
            "--no-browser",
            "--internal-host", "127.0.0.1",
            "--port", str(self.port),
            "--host", self.url,
            "--log-level", self.log_level,
        ]  # fmt: skip
        self._log_file = open(self.log_path, "ab")
        self._log_offset = self._log_file.tell()
        self._log_file.write(f"\n=== aesemo e2e: {' '.join(cmd)}\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.data_dir,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() can take down any children
        )
        try:
            self._wait_ready()
        except LabelStudioError as e:
            self.stop()
            if self.used_template:
                raise LabelStudioError(
                    f"{e}\n(started from the database template {self.template_dir}: delete it, or set "
                    "AESEMO_LS_FRESH_DB=1, to start from an empty database)"
                ) from e
            raise
        except BaseException:
            self.stop()
            raise

    def _copy_template(self, db_path: Path) -> bool:
        src = self.template_dir / "label_studio.sqlite3"
        meta_path = self.template_dir / "credentials.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return False
        if not src.is_file() or meta.get("username") != self.username or meta.get("version") != LS_VERSION:
            return False
        shutil.copyfile(src, db_path)
        self.password, self.token = meta["password"], meta["token"]
        return True

    def _save_template(self, db_path: Path) -> None:
        """Snapshot the just-migrated database (sqlite backup API: safe while the server runs).
        Built in a scratch folder and renamed into place, so readers never see half a template."""
        if self.template_dir.exists():
            return
        tmp = self.venv / f".aesemo-db-template.{os.getpid()}"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            src, dst = sqlite3.connect(db_path), sqlite3.connect(tmp / "label_studio.sqlite3")
            try:
                src.backup(dst)
            finally:
                src.close()
                dst.close()
            meta = {"username": self.username, "password": self.password, "token": self.token, "version": LS_VERSION}
            (tmp / "credentials.json").write_text(json.dumps(meta))
            os.rename(tmp, self.template_dir)  # fails if another session got there first: fine
        except (OSError, sqlite3.Error) as e:  # only a cache: never fail a start because of it
            if not self.template_dir.exists():
                print(f"ls_server.py: could not save the database template: {e}", file=sys.stderr)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = self.proc.poll()
            if self._port_taken():
                raise _PortTaken()
            if code is not None:
                raise LabelStudioError(
                    f"Label Studio exited with code {code} before it was ready\n{self.log_tail()}"
                )
            try:
                r = self.session.get(f"{self.url}/health/", timeout=2)
                if r.status_code == 200 and r.json().get("status") == "UP":
                    return
            except (requests.RequestException, ValueError):
                pass
            if time.monotonic() > deadline:
                raise LabelStudioError(
                    f"Label Studio not ready on {self.url} after {self.start_timeout:.0f} s\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def _port_taken(self) -> bool:
        """label-studio silently moves to port+1 when its port is busy ("Port N is in use"),
        which would leave HOST (what /setup sends as hostname) pointing at the wrong port."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f"Port {self.port} is in use".encode() in f.read()
        except OSError:
            return False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after ``timeout`` s) and close the log."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            self._signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=timeout)
        if proc is not None:
            # Children left in its process group (none are expected with runserver --noreload).
            self._signal_group(proc, signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    @staticmethod
    def _signal_group(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)  # pgid == pid thanks to start_new_session
        except (ProcessLookupError, PermissionError):
            pass

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "--- label-studio.log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> "LabelStudioServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ raw API

    def api(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> requests.Response:
        """``requests`` call to ``url + path`` with ``Authorization: Token <token or admin token>``.

        Raises LabelStudioError (with status and body) on a non-2xx reply; returns the Response.
        ``path`` may also be an absolute URL on this server (e.g. an image URL from a task).
        """
        url = path if path.startswith("http") else f"{self.url}{path}"
        headers = dict(kwargs.pop("headers", None) or {})
        headers.setdefault("Authorization", f"Token {token or self.token}")
        kwargs.setdefault("timeout", self.request_timeout)
        r = self.session.request(method, url, headers=headers, **kwargs)
        if not 200 <= r.status_code < 300:
            body = r.text
            raise LabelStudioError(
                f"{method} {path} -> {r.status_code} {r.reason}: {body[:2000]}", status=r.status_code, body=body
            )
        return r

    def api_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """``api()`` and the decoded JSON body (None for an empty body)."""
        r = self.api(method, path, **kwargs)
        return r.json() if r.content else None

    # ------------------------------------------------------------------ projects, tasks

    def create_project(self, title: str, label_config: str, **extra: Any) -> dict:
        return self.api_json("POST", "/api/projects", json={"title": title, "label_config": label_config, **extra})

    def project(self, project_id: int) -> dict:
        return self.api_json("GET", f"/api/projects/{project_id}")

    def update_project(self, project_id: int, **fields: Any) -> dict:
        return self.api_json("PATCH", f"/api/projects/{project_id}", json=fields)

    def import_files(self, project_id: int, paths: Iterable[str | os.PathLike]) -> dict:
        """Multipart upload, one task per file. Field names are f1, f2, ... (a repeated name keeps
        only the last file). Returns LS's reply, e.g. ``{"task_count": 2, "file_upload_ids": [...]}``."""
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
        """Import JSON tasks. Each item is a task's ``data`` dict (wrapped as ``{"data": item}``),
        unless it already has a ``data`` key, in which case it is sent as is."""
        body = [dict(t) if "data" in t else {"data": dict(t)} for t in tasks]
        return self.api_json("POST", f"/api/projects/{project_id}/import", json=body)

    def tasks(self, project_id: int, page_size: int = 100) -> list[dict]:
        """All tasks of a project (GET /api/tasks?project=P, every page)."""
        out: list[dict] = []
        page = 1
        while True:
            body = self.api_json(
                "GET", "/api/tasks", params={"project": project_id, "page": page, "page_size": page_size}
            )
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
        """GET a file LS serves (``/data/upload/...``, ``/data/local-files/?d=...``) with the token."""
        return self.api("GET", url_or_path, token=token)

    # ------------------------------------------------------------------ ML backends, predictions

    def connect_ml_backend(
        self,
        project_id: int,
        url: str,
        title: str = "aesemo",
        basic_auth: tuple[str, str] | None = None,
        **extra: Any,
    ) -> dict:
        """POST /api/ml. LS calls the backend's /health and /setup before answering (400 if they fail).
        Also auto-creates the project webhook ``<url>/webhook``."""
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
        """Data Manager action "Retrieve Predictions" for ``task_ids`` (None: all tasks).
        LS answers ``{"processed_items": N, "detail": "Retrieved N predictions"}`` even when the backend failed."""
        if task_ids is None:
            selected: dict[str, Any] = {"all": True, "excluded": []}
        else:
            selected = {"all": False, "included": [int(t) for t in task_ids]}
        return self.api_json(
            "POST",
            "/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": project_id},
            json={"selectedItems": selected},
        )

    def predictions(self, task_id: int) -> list[dict]:
        """Every prediction stored for a task (GET /api/predictions?task=T)."""
        return self.api_json("GET", "/api/predictions", params={"task": task_id})

    # ------------------------------------------------------------------ users, annotations

    def signup_user(self, email: str, password: str) -> str:
        """Create a user through the signup form (the REST API cannot set a password) and return
        that user's legacy API token. The user joins the (single) organization."""
        s = requests.Session()
        s.trust_env = False
        try:
            signup = f"{self.url}/user/signup/"
            page = s.get(signup, timeout=self.request_timeout)
            page.raise_for_status()
            m = re.search(r'name="csrfmiddlewaretoken"\s+value="([^"]+)"', page.text)
            csrf = m.group(1) if m else s.cookies.get("csrftoken")
            if not csrf:
                raise LabelStudioError("signup_user: no CSRF token on /user/signup/")
            r = s.post(
                signup,
                data={"csrfmiddlewaretoken": csrf, "email": email, "password": password},
                headers={"Referer": signup},
                allow_redirects=False,
                timeout=self.request_timeout,
            )
            if r.status_code != 302:
                errors = re.findall(r'class="[^"]*error[^"]*"[^>]*>([^<]+)<', r.text)
                raise LabelStudioError(
                    f"signup_user({email}): expected 302, got {r.status_code}; form errors: {errors or r.text[:500]}",
                    status=r.status_code,
                    body=r.text,
                )
            t = s.get(f"{self.url}/api/current-user/token", timeout=self.request_timeout)
            if t.status_code != 200:
                raise LabelStudioError(
                    f"signup_user({email}): GET /api/current-user/token -> {t.status_code}: {t.text[:500]}",
                    status=t.status_code,
                    body=t.text,
                )
            return t.json()["token"]
        finally:
            s.close()

    def whoami(self, token: str | None = None) -> dict:
        """The user a token belongs to (GET /api/current-user/whoami): ``id``, ``email``, ..."""
        return self.api_json("GET", "/api/current-user/whoami", token=token)

    def create_annotation(self, task_id: int, result: list[dict], token: str | None = None, **extra: Any) -> dict:
        """POST /api/tasks/{id}/annotations as the token's user (default: admin)."""
        return self.api_json("POST", f"/api/tasks/{task_id}/annotations", token=token, json={"result": result, **extra})

    def annotations(self, task_id: int) -> list[dict]:
        return self.api_json("GET", f"/api/tasks/{task_id}/annotations")


if __name__ == "__main__":  # manual smoke run: python tests/e2e/ls_server.py [data_dir]
    import tempfile

    with LabelStudioServer(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="ls-")) as server:
        print(server.url, server.token, server.whoami())
