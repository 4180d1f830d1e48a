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
import importlib.util
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator

import httpx
import redis
from rq import Worker

from model.errors import AesemoError
from model.files import write_text_atomically

from backend.labelstudio.admin_client import (LS_VERSION, LabelStudioClient, LabelStudioError, ensure_ls_venv,
                                 is_up, label_studio_command, label_studio_environment, local_session,
                                 port_moved)
from backend.core.redis_connection import lease_embedded_redis, release_embedded_redis
from backend.core.settings import load_settings
from backend.serving.suggestions import UNTRAINED_SUFFIX

READY_LINE = "aesemo stack: ready"
ADMIN_EMAIL = "admin@example.com"
ANNOTATORS = 3
PROJECT_TITLE = "Aesthetics and emotion (demo)"
# shipped in the package (label_config/aesthetic_emotion.xml, its documented place, links to it)
LABEL_CONFIG = resources.files("backend.labelstudio") / "aesthetic_emotion.xml"
DEMO_BACKBONE = "resnet18"
# real photographs inside scikit-image's wheel (skimage/data), read from the installed package
# Label Studio Community settings that keep each vote independent, as far as Community allows
# (docs/operators/demo-stack.md): the labelling stream ("Label All Tasks") shows an annotator only their own
# annotation, never their earlier versions; no empty annotation counts as a vote; the instructions,
# shown before the first task, ask them to label from the stream rather than open the task list,
# where Community shows everyone's labels to every member.
INDEPENDENT_VOTES = {
    "show_annotation_history": False,
    "enable_empty_annotation": False,
    "show_skip_button": True,
    "show_instruction": True,
    "expert_instruction": (
        "<p>Label each photo with your own judgement: open tasks with <b>Label All Tasks</b>, not from "
        "the task list (it shows the other annotators' labels). Keys: <b>q</b> high, <b>w</b> low; "
        "<b>1</b>-<b>8</b> the emotion; <b>Ctrl+Enter</b> submits.</p>"),
}
SAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                 "hubble_deep_field.jpg", "retina.jpg", "camera.png", "coins.png", "moon.png", "grass.png",
                 "brick.png")
# the environment of the backend and worker: nothing aimed at another Redis, metrics folder or LS
_CHILD_SCRUB = ("REDIS_URL", "PROMETHEUS_MULTIPROC_DIR", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "PYTHONSTARTUP")


class StackError(AesemoError):
    """The stack cannot start (a port in use, a piece that died or never got ready)."""


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


def default_ls_venv(data_dir: Path, checkout: Path = Path(__file__).resolve().parents[2]) -> Path:
    """.venv-ls at the repository root when run from a checkout (beside .venv, where the
    end-to-end tests make theirs too), else (an installed package) .venv-ls in the data directory."""
    return checkout / ".venv-ls" if (checkout / "pyproject.toml").is_file() else Path(data_dir) / ".venv-ls"


def stack_options(ls_port: int, backend_port: int, ls_venv: str | None = None) -> StackOptions:
    """The data directory of the settings (AESEMO_DATA_DIR); Label Studio from --ls-venv, else
    $LS_VENV, else `default_ls_venv`."""
    venv = ls_venv or os.environ.get("LS_VENV")
    return StackOptions(data_dir=load_settings().data_dir, ls_port=ls_port, backend_port=backend_port,
                        **({"ls_venv": Path(venv)} if venv else {}))


def say(message: str) -> None:
    print(f"aesemo stack: {message}", flush=True)


# ---------------------------------------------------------------------- the whole run

def run_stack(options: StackOptions) -> int:
    options.data_dir.mkdir(parents=True, exist_ok=True)
    processes = Processes(options.logs_dir)
    redis_owner = EmbeddedRedis(options.data_dir)
    with _only_stack_of(options.data_dir), _signals_stop_the_stack() as stop_signals:
        try:
            state = load_or_create_state(options)
            check_ports_free(options)
            venv = ensure_ls_venv(options.ls_venv)
            bring_up(options, state, venv, processes, redis_owner)
            prepare_demo(LabelStudioClient(options.ls_url, state["admin"]["token"], request_timeout=300),
                         options, state)
            print_summary(options, state)
            watch(processes)
        except _StopRequested as stop:
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

def load_or_create_state(options: StackOptions) -> dict:
    """Logins and the project id of earlier runs; new passwords and token the first time."""
    if options.state_path.exists():
        return json.loads(options.state_path.read_text())
    if (options.ls_data_dir / "label_studio.sqlite3").exists():
        raise StackError(f"{options.ls_data_dir} holds a Label Studio database but {options.state_path} "
                         f"(its admin login) is missing: restore it, or delete {options.ls_data_dir} to start afresh")
    state = {
        "admin": {"email": ADMIN_EMAIL, "password": secrets.token_urlsafe(12), "token": secrets.token_hex(20)},
        "annotators": [{"email": f"annotator{i}@example.com", "password": secrets.token_urlsafe(12)}
                       for i in range(1, ANNOTATORS + 1)],
        "project_id": None,
    }
    save_state(options, state)
    return state


def save_state(options: StackOptions, state: dict) -> None:
    """Written aside and renamed, readable by its owner only (it holds passwords)."""
    write_text_atomically(options.state_path, json.dumps(state, indent=2))


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

class _StopRequested(BaseException):
    """Raised by the signal handler; a BaseException so that no `except Exception` swallows it."""


class _StopSignals:
    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.ignoring = False

    def handle(self, signum, frame) -> None:
        if not self.ignoring:
            self.ignoring = True
            raise _StopRequested(signal.Signals(signum).name)

    def ignore(self) -> None:
        self.ignoring = True


@contextmanager
def _signals_stop_the_stack() -> Iterator[_StopSignals]:
    signals = _StopSignals()
    previous = {sig: signal.signal(sig, signals.handle) for sig in _StopSignals.SIGNALS}
    try:
        yield signals
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------- processes

@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: Path
    log_offset: int = 0  # where this run's lines start in the (appended) log

    def terminate(self) -> None:
        _signal_group(self.proc.pid, signal.SIGTERM)

    def wait(self, deadline: float) -> None:
        """Wait for the leader until `deadline` (time.monotonic()), then SIGKILL its group; and
        SIGKILL whatever it left behind in the group either way."""
        try:
            self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"{self.name} did not stop in time: killing it")
        _signal_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)  # pgid == the leader's pid: every child starts its own session
    except (ProcessLookupError, PermissionError):
        pass


class Processes:
    """The processes the stack started, each the leader of its own process group, so that a
    Ctrl-C in the terminal reaches the stack only and the stack stops them in order."""

    def __init__(self, logs_dir: Path):
        self.logs_dir = logs_dir
        self.children: list[Child] = []

    def spawn(self, name: str, log_name: str, cmd: list[str], env: dict, cwd: Path) -> Child:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.logs_dir / f"{log_name}.log"
        with open(log_path, "ab") as log:
            log.write(f"\n=== aesemo stack: {' '.join(cmd)}\n".encode())
            log.flush()
            offset = log.tell()
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        child = Child(name, proc, log_path, offset)
        self.children.append(child)
        say(f"started {name} (pid {proc.pid}; log {log_path})")
        return child

    def check(self) -> None:
        """Raise when a child has exited: the stack is incomplete without it."""
        for child in self.children:
            code = child.proc.poll()
            if code is not None:
                raise StackError(f"{child.name} exited with code {code}; the end of {child.log_path}:\n"
                                 f"{child.log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM to every group at once, then wait for each (newest first), `timeout_s` in all."""
        start = time.monotonic()
        for child in self.children:
            child.terminate()
        for child in reversed(self.children):
            child.wait(start + timeout_s)
            say(f"stopped {child.name} ({time.monotonic() - start:.1f} s)")
        self.children.clear()


class EmbeddedRedis:
    """The data directory's Redis, used by this run (its backend and worker get its URL): at the
    end it stops unless another process of the data directory (a serve or worker started by
    hand) still uses it (backend/core/redis_connection.py)."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir

    def start(self) -> str:
        return lease_embedded_redis(self.data_dir)

    def stop(self) -> None:
        if release_embedded_redis(self.data_dir):
            say("stopped the embedded Redis")


def wait_for(what: str, processes: Processes, ready: Callable[[], bool], timeout_s: float, hint: str = "",
             report_every_s: float = 10.0) -> None:
    """Poll `ready` until it holds, saying how long it has been; fail when a child dies."""
    say(f"waiting for {what}{hint}")
    start = time.monotonic()
    next_report = start + report_every_s
    while not ready():
        processes.check()
        now = time.monotonic()
        if now - start > timeout_s:
            raise StackError(f"{what} not ready after {timeout_s:.0f} s; see the logs in {processes.logs_dir}")
        if now >= next_report:
            say(f"  still waiting for {what} ({now - start:.0f} s)")
            next_report += report_every_s
        time.sleep(0.5)
    say(f"{what} is ready ({time.monotonic() - start:.1f} s)")


def watch(processes: Processes) -> None:
    """Until a signal: every second, check that every piece is still running."""
    while True:
        processes.check()
        time.sleep(1.0)


# ---------------------------------------------------------------------- the pieces

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

def prepare_demo(client: LabelStudioClient, options: StackOptions, state: dict) -> None:
    """Each step checks Label Studio first, so a second run adds nothing twice."""
    project_id = ensure_project(client, options, state)
    ensure_annotators(client, options, state)
    ensure_backend_connected(client, project_id, options.backend_url)
    import_missing_photos(client, project_id, sample_photos())
    pre_annotate(client, project_id)


def ensure_project(client: LabelStudioClient, options: StackOptions, state: dict) -> int:
    project_id = state.get("project_id")
    if project_id is not None:
        try:
            client.update_project(project_id, **INDEPENDENT_VOTES)
            say(f"reusing project {project_id}")
            return project_id
        except LabelStudioError as exc:
            if exc.status != 404:
                raise
            say(f"project {project_id} is gone from Label Studio: making a new one")
    project = client.create_project(PROJECT_TITLE, LABEL_CONFIG.read_text(),
                                    description="Sample photographs pre-annotated by aesemo; 3 annotators each",
                                    maximum_annotations=ANNOTATORS, overlap_cohort_percentage=100,
                                    **INDEPENDENT_VOTES)
    state["project_id"] = project["id"]
    save_state(options, state)
    say(f"created project {project['id']} (every photo needs {ANNOTATORS} annotators)")
    return project["id"]


def ensure_annotators(client: LabelStudioClient, options: StackOptions, state: dict) -> None:
    """Through the signup form (the REST API cannot set a password); they join the organization."""
    existing = {user["email"] for user in client.users()}
    for annotator in state["annotators"]:
        if annotator["email"] in existing:
            continue
        annotator["token"] = client.signup_user(annotator["email"], annotator["password"])
        save_state(options, state)
        say(f"signed up {annotator['email']}")


def ensure_backend_connected(client: LabelStudioClient, project_id: int, url: str) -> None:
    """Connect the backend at `url`; a connection to another address (an earlier run's
    --backend-port) is removed first, with the webhook Label Studio made for it."""
    backends = client.ml_backends(project_id)
    if any(b["url"].rstrip("/") == url for b in backends):
        return
    for stale in backends:
        client.disconnect_ml_backend(stale["id"])
        for hook in client.webhooks(project_id):
            if hook["url"] == f"{stale['url'].rstrip('/')}/webhook":
                client.delete_webhook(hook["id"])
    settings = load_settings()
    basic_auth = (settings.basic_auth_user, settings.basic_auth_pass or "") if settings.basic_auth_user else None
    client.connect_ml_backend(project_id, url, basic_auth=basic_auth)
    say(f"connected the backend {url} to project {project_id}")


def sample_photos() -> list[Path]:
    """The photographs in the installed scikit-image package (no download)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise StackError("scikit-image is not installed (it ships the sample photos): "
                         "pip install -e '.[demo]', or run scripts/setup.sh")
    folder = Path(spec.origin).parent / "data"
    missing = [name for name in SAMPLE_PHOTOS if not (folder / name).is_file()]
    if missing:
        raise StackError(f"{folder} lacks {', '.join(missing)}")
    return [folder / name for name in SAMPLE_PHOTOS]


def uploaded_name(task: dict) -> str:
    """`/data/upload/1/ca16892c-astronaut.png` -> `astronaut.png` (LS prefixes 8 hex digits)."""
    name = str(task.get("data", {}).get("image", "")).rsplit("/", 1)[-1]
    return re.sub(r"^[0-9a-f]{8}-", "", name)


def import_missing_photos(client: LabelStudioClient, project_id: int, photos: list[Path]) -> None:
    present = {uploaded_name(task) for task in client.tasks(project_id)}
    missing = [photo for photo in photos if photo.name not in present]
    if missing:
        client.import_files(project_id, missing)
        # tasks get the project's overlap when it is set after they exist (Label Studio protocol notes, section 9)
        client.update_project(project_id, maximum_annotations=ANNOTATORS, overlap_cohort_percentage=100)
        say(f"imported {len(missing)} sample photographs")


def pre_annotate(client: LabelStudioClient, project_id: int, attempts: int = 3) -> None:
    """Data Manager's "Retrieve Predictions" for every task: Label Studio asks the backend only for
    tasks without a prediction of its current model version. Tasks left without one are asked for
    again (Label Studio gives up on a /predict after 100 s and does not retry by itself). Nothing is
    asked while the backend serves an untrained version: it would answer no suggestions."""
    untrained = untrained_version(client, project_id)
    if untrained:
        say(f"no suggestions yet: the backend serves {untrained}, never trained on labels, and sends none "
            f"from it (random suggestions would steer the annotators); suggestions start after the first "
            f"training: label {load_settings().min_training_labels} photos, then Start Training (Label "
            f"Studio's model settings or the backend's admin page)")
        return
    say("asking the backend for suggestions on the photos that have none (its first request loads the model)")
    client.retrieve_predictions(project_id)
    for attempt in range(2, attempts + 1):
        todo = [task["id"] for task in client.tasks(project_id) if not task.get("total_predictions")]
        if not todo:
            break
        say(f"{len(todo)} photos have no suggestion yet: asking again (try {attempt} of {attempts})")
        client.retrieve_predictions(project_id, todo)
    tasks = client.tasks(project_id)
    done = sum(1 for task in tasks if task.get("total_predictions"))
    say(f"{done} of {len(tasks)} photos carry the backend's suggestions")


def untrained_version(client: LabelStudioClient, project_id: int) -> str | None:
    """The untrained version the project's backend serves and withholds suggestions from, None
    when it serves a trained one or sends them anyway: Label Studio's backend record holds the
    version name of the backend's last /setup answer, which says `-untrained` for such a version."""
    if load_settings().suggest_untrained:
        return None
    names = [b.get("model_version") or "" for b in client.ml_backends(project_id)]
    return next((name for name in names if name.endswith(UNTRAINED_SUFFIX)), None)


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
