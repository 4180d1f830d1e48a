"""Start and drive a real Label Studio 1.23.2 server for end-to-end tests.

Plain Python (no pytest). Typical use::

    with LabelStudioServer(tmp_dir) as ls:
        project = ls.create_project("demo", LABEL_CONFIG)
        ls.import_files(project["id"], [png_path])
        ls.connect_ml_backend(project["id"], "http://127.0.0.1:9090")
        ls.retrieve_predictions(project["id"], [t["id"] for t in ls.tasks(project["id"])])

Label Studio lives in its own virtualenv, ``<repo>/.venv-ls`` (made by ``ensure_ls_venv``
on first use, about a minute). The server binds to 127.0.0.1 on a free port, keeps its sqlite
database, uploads and log (``label-studio.log``) under ``data_dir``, and is started with the
settings from docs/developers/label-studio-protocol.md section 2: legacy ``Token`` auth on, local ML
backends and webhooks allowed, local-files serving rooted at ``files_dir``. The PyPI version
check and Sentry reporting are switched off, so the server talks to nothing outside 127.0.0.1
(beyond what a test asks of it).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Mapping

from backend.labelstudio.admin_client import (
    LS_VERSION,
    LabelStudioClient,
    LabelStudioError,
    ensure_ls_venv,
    is_up,
    label_studio_command,
    label_studio_environment,
    local_session,
    port_moved,
)
from net import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO_ROOT / ".venv-ls"


class _PortTaken(Exception):
    pass




class LabelStudioServer(LabelStudioClient):
    """One Label Studio process on 127.0.0.1, plus the API calls of ``LabelStudioClient``
    (backend/labelstudio/admin_client.py: label-studio-sdk, shared with ``aesemo stack``)."""

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
        # the URL is known only once a port is chosen: the ``url`` property below
        super().__init__("", token or secrets.token_hex(20), request_timeout)  # the admin's legacy API token
        self.data_dir = Path(data_dir).resolve()
        self.files_dir = Path(files_dir).resolve() if files_dir else self.data_dir / "files"
        self.port = port
        self.username = username
        self.password = password or secrets.token_urlsafe(16)
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
        self.log_level = log_level
        self.log_path = self.data_dir / "label-studio.log"
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self._log_offset = 0
        self.session = local_session()

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        if self.port is None:
            raise LabelStudioError("Label Studio has not been started")
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        """The environment the server process runs with."""
        env = label_studio_environment(self.venv, self.data_dir, self.files_dir, self.username, self.password,
                                       self.token)
        env.update(self.extra_env)
        return env

    def start(self) -> LabelStudioServer:
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
        cmd = label_studio_command(self.venv, self.port, self.log_level)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115  (the server's log while it runs; closed in stop())
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
            if is_up(self.session, self.url):
                return
            if time.monotonic() > deadline:
                raise LabelStudioError(
                    f"Label Studio not ready on {self.url} after {self.start_timeout:.0f} s\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def _port_taken(self) -> bool:
        return port_moved(self.log_path, self._log_offset, self.port)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after ``timeout`` s) and close the log."""
        proc, self.proc = self.proc, None
        self.close()
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

    def __enter__(self) -> LabelStudioServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":  # manual smoke run: python tests/e2e/ls_server.py [data_dir]
    import tempfile

    with LabelStudioServer(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="ls-")) as server:
        print(server.url, server.token, server.whoami())
