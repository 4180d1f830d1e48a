"""`aesemo stack`: the whole product on one machine, until Ctrl-C.

It starts the embedded Redis of the data directory, a real Label Studio 1.23.2 (from .venv-ls),
the backend (`aesemo serve`) and a training worker (`aesemo worker`), waiting for each. Then,
the first time only, it makes a demo project (overlap 3) with three annotators, connects the
backend, imports sample photographs (scikit-image ships them) and has the backend pre-annotate
them. What it made is remembered in `<data dir>/stack.json` (logins, project id), so a second
run reuses the same project, users and photos. Ctrl-C, SIGTERM or SIGHUP stops everything it
started: each child's process group, and the embedded Redis.

Backbone: `AESEMO_BACKBONE` when set, else resnet18, not the service's vgg16: the stack is a CPU
demo, and resnet18 needs 7.6 GFLOP per image against vgg16's 63.5, so pre-annotating the photos
and a first training job take seconds rather than minutes.
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator

import httpx
import redis
from rq import Worker

from backend.labelstudio.admin_client import (LS_VERSION, LabelStudioClient, LabelStudioError, ensure_ls_venv,
                                 is_up, label_studio_command, label_studio_environment, local_session,
                                 port_moved)
from backend.core.settings import load_settings
from backend.tools.demo_project import load_or_create_state, prepare_demo
from backend.tools.processes import (Child, EmbeddedRedis, Processes, StackError, StopRequested, say,
                                     signals_stop_the_stack, wait_for, watch)

READY_LINE = "aesemo stack: ready"
DEMO_BACKBONE = "resnet18"
# the environment of the backend and worker: nothing aimed at another Redis, metrics folder or LS
_CHILD_SCRUB = ("REDIS_URL", "PROMETHEUS_MULTIPROC_DIR", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "PYTHONSTARTUP")


@dataclass(frozen=True)
class StackOptions:
    data_dir: Path
    ls_port: int = 8080
    backend_port: int = 9090
    ls_venv: Path | None = None  # None: default_ls_venv(data_dir)

    def __post_init__(self):
        if self.ls_venv is None:
            object.__setattr__(self, "ls_venv", default_ls_venv(self.data_dir))

    @property
    def ls_url(self) -> str:
        return f"http://127.0.0.1:{self.ls_port}"

    @property
    def backend_url(self) -> str:
        return f"http://127.0.0.1:{self.backend_port}"

    @property
    def state_path(self) -> Path:
        return self.data_dir / "stack.json"

    @property
    def ls_data_dir(self) -> Path:
        return self.data_dir / "label-studio"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"


CHECKOUT = Path(__file__).resolve().parents[2]  # the repository root, when run from a checkout


def default_ls_venv(data_dir: Path, checkout: Path = CHECKOUT) -> Path:
    """.venv-ls at the repository root when run from a checkout (beside .venv, where the
    end-to-end tests make theirs too), else (an installed package) .venv-ls in the data directory."""
    return checkout / ".venv-ls" if (checkout / "pyproject.toml").is_file() else Path(data_dir) / ".venv-ls"


def stack_options(ls_port: int, backend_port: int, ls_venv: str | None = None) -> StackOptions:
    """The data directory of the settings (AESEMO_DATA_DIR); Label Studio from --ls-venv, else
    $LS_VENV, else `default_ls_venv`."""
    venv = ls_venv or os.environ.get("LS_VENV")
    return StackOptions(data_dir=load_settings().data_dir, ls_port=ls_port, backend_port=backend_port,
                        **({"ls_venv": Path(venv)} if venv else {}))


# ---------------------------------------------------------------------- the whole run

def run_stack(options: StackOptions) -> int:
    options.data_dir.mkdir(parents=True, exist_ok=True)
    processes = Processes(options.logs_dir)
    redis_owner = EmbeddedRedis(options.data_dir)
    with _only_stack_of(options.data_dir), signals_stop_the_stack() as stop_signals:
        try:
            state = load_or_create_state(options)
            check_ports_free(options)
            venv = ensure_ls_venv(options.ls_venv)
            bring_up(options, state, venv, processes, redis_owner)
            prepare_demo(LabelStudioClient(options.ls_url, state["admin"]["token"], request_timeout=300),
                         options, state)
            print_summary(options, state)
            watch(processes)
        except StopRequested as stop:
            say(f"{stop} received: stopping everything")
        except LabelStudioError as exc:
            raise StackError(str(exc)) from exc
        finally:
            stop_signals.ignore()  # a second Ctrl-C must not interrupt the clean-up
            processes.stop()
            redis_owner.stop()
    say("stopped")
    return 0


def bring_up(options: StackOptions, state: dict, venv: Path, processes: Processes, redis_owner: EmbeddedRedis) -> None:
    """Redis first (the backend and worker need it); Label Studio is launched before the others
    and waited for last, since its first start (database migrations) is the slowest."""
    redis_url = start_redis(redis_owner)
    fresh_database = not (options.ls_data_dir / "label_studio.sqlite3").exists()
    label_studio = start_label_studio(options, state, venv, processes)
    child_env = backend_environment(options, state, redis_url)
    start_backend(options, child_env, processes)
    worker = start_worker(options, child_env, processes)
    wait_for("the backend", processes, lambda: backend_up(options.backend_url), timeout_s=300)
    wait_for("the training worker", processes, lambda: worker_registered(redis_url, worker.proc.pid), timeout_s=300)
    wait_for("Label Studio", processes, lambda: label_studio_ready(options, label_studio), timeout_s=600,
             hint=" (first start: it migrates its database, 1-4 minutes)" if fresh_database else "")


# ---------------------------------------------------------------------- state

@contextmanager
def _only_stack_of(data_dir: Path) -> Iterator[None]:
    """One stack per data directory: a second would share its Redis and Label Studio database."""
    with open(data_dir / "stack.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(f"another aesemo stack is running with the data directory {data_dir}") from None
        yield


def check_ports_free(options: StackOptions) -> None:
    """Refuse a port something listens on. SO_REUSEADDR, as the servers themselves bind: a port
    whose connections of a previous run linger in TIME_WAIT is free to them."""
    for port, flag in ((options.ls_port, "--ls-port"), (options.backend_port, "--backend-port")):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                raise StackError(f"port {port} on 127.0.0.1 is in use: stop what holds it, or choose "
                                 f"another with {flag}") from None


# ---------------------------------------------------------------------- signals

def start_redis(redis_owner: EmbeddedRedis) -> str:
    configured = load_settings().redis_url
    if configured:
        say("using the Redis of REDIS_URL")
        return configured
    url = redis_owner.start()
    say(f"embedded Redis is up ({url})")
    return url


def start_label_studio(options: StackOptions, state: dict, venv: Path, processes: Processes) -> Child:
    files_dir = options.data_dir / "files"
    files_dir.mkdir(parents=True, exist_ok=True)
    options.ls_data_dir.mkdir(parents=True, exist_ok=True)
    admin = state["admin"]
    env = label_studio_environment(venv, options.ls_data_dir.resolve(), files_dir.resolve(), admin["email"],
                                   admin["password"], admin["token"])
    return processes.spawn(f"Label Studio {LS_VERSION}", "label-studio", label_studio_command(venv, options.ls_port),
                           env, cwd=options.ls_data_dir)


def label_studio_ready(options: StackOptions, label_studio: Child) -> bool:
    if port_moved(label_studio.log_path, label_studio.log_offset, options.ls_port):
        raise StackError(f"Label Studio found port {options.ls_port} in use; choose another with --ls-port")
    with local_session() as session:
        return is_up(session, options.ls_url)


def backend_environment(options: StackOptions, state: dict, redis_url: str) -> dict:
    """What the backend and worker run with: the caller's environment, the data directory, this
    Label Studio with the admin's token, this Redis, and the demo's backbone."""
    env = {k: v for k, v in os.environ.items() if k not in _CHILD_SCRUB}
    env.update(
        AESEMO_DATA_DIR=str(options.data_dir.resolve()),
        AESEMO_BACKBONE=os.environ.get("AESEMO_BACKBONE") or DEMO_BACKBONE,
        LABEL_STUDIO_URL=options.ls_url,
        LABEL_STUDIO_API_KEY=state["admin"]["token"],
        REDIS_URL=redis_url,
        PYTHONUNBUFFERED="1",
    )
    return env


def _aesemo() -> list[str]:
    beside = Path(sys.executable).parent / "aesemo"
    return [str(beside)] if beside.is_file() else [sys.executable, "-m", "backend.cli"]


def start_backend(options: StackOptions, env: dict, processes: Processes) -> Child:
    cmd = [*_aesemo(), "serve", "--host", "127.0.0.1", "--port", str(options.backend_port)]
    return processes.spawn("backend", "backend", cmd, env, cwd=options.data_dir)


def backend_up(url: str) -> bool:
    try:
        with local_session(timeout=2) as session:
            r = session.get(f"{url}/health")
        return r.status_code == 200 and r.json().get("status") == "UP"
    except (httpx.HTTPError, ValueError):
        return False


def start_worker(options: StackOptions, env: dict, processes: Processes) -> Child:
    return processes.spawn("training worker", "worker", [*_aesemo(), "worker"], env, cwd=options.data_dir)


def worker_registered(redis_url: str, pid: int) -> bool:
    """RQ lists the worker once it listens on its queue."""
    try:
        return any(w.pid == pid for w in Worker.all(connection=redis.Redis.from_url(redis_url)))
    except redis.RedisError:
        return False


# ---------------------------------------------------------------------- the demo project

def print_summary(options: StackOptions, state: dict) -> None:
    admin = state["admin"]
    lines = [
        "",
        f"Label Studio      {options.ls_url}/projects/{state['project_id']}/data",
        f"  admin           {admin['email']}  password {admin['password']}",
        *(f"  annotator       {a['email']}  password {a['password']}" for a in state["annotators"]),
        f"backend           {options.backend_url}  (backbone {os.environ.get('AESEMO_BACKBONE') or DEMO_BACKBONE})",
        f"  admin page      {options.backend_url}/?project={state['project_id']}  (versions, training, consensus)",
        f"data, logs, logins in {options.data_dir}  ({options.state_path.name}, {options.logs_dir.name}/)",
        "",
    ]
    print("\n".join(lines), flush=True)
    print(READY_LINE, flush=True)
    print("Ctrl-C stops everything", flush=True)
