"""The Docker deployment (docker/) agrees with the code: compose services, volumes, ports, health
checks and the GPU reservation; every environment variable the backend and worker get is a
setting of backend/core/settings.py, and every setting is in docker/.env.example (with its default) and
in the README's Settings table; the images run existing `aesemo` subcommands; the requirements
repeat pyproject.toml's pins. Static checks (no Docker engine needed), plus the health-check
script against a small HTTP server."""
from __future__ import annotations

import base64
import dataclasses
import inspect
import json
import re
import shlex
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from backend.core import settings as settings_module
from backend.core.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
SERVICES = ("label-studio", "redis", "backend", "worker")
# read by the CMD of backend.Dockerfile (aesemo serve --workers/--threads), not by settings.py
IMAGE_VARIABLES = {"AESEMO_WORKERS", "AESEMO_THREADS"}
LS_URL = "http://label-studio:8080"


class _ComposeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, also accepting Compose's merge tags (!override, !reset)."""


def _tagged(loader, suffix, node):
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(node)


_ComposeLoader.add_multi_constructor("!", _tagged)


def _load_yaml(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)


@pytest.fixture(scope="module")
def compose() -> dict:
    return _load_yaml(DOCKER / "compose.yaml")


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the "NAME=value" list form
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def _volumes(service: dict) -> dict[str, str]:
    """target -> source of a service's volumes (short "src:dst[:mode]" or long syntax)."""
    mounts = {}
    for item in service.get("volumes") or []:
        if isinstance(item, str):
            # split on the colons outside ${...} (a default such as ${DIR:-./x} has one)
            parts = re.findall(r"(?:\$\{[^}]*\}|[^:])+", item)
            mounts[parts[1]] = parts[0]
        else:
            mounts[item["target"]] = item.get("source")
    return mounts


def _ports(service: dict) -> set[tuple[str, str]]:
    """(published, target) pairs; the short form may start with a host address."""
    pairs = set()
    for item in service.get("ports") or []:
        if isinstance(item, dict):
            pairs.add((str(item.get("published")), str(item["target"])))
        else:
            parts = str(item).split(":")
            pairs.add((parts[-2], parts[-1]))
    return pairs


def _healthcheck_command(service: dict) -> str:
    test = (service.get("healthcheck") or {}).get("test")
    assert test, "no healthcheck"
    if isinstance(test, list):
        assert test[0] in ("CMD", "CMD-SHELL"), test
        return " ".join(str(part) for part in test[1:])
    return str(test)


# -- what backend/core/settings.py reads --------------------------------------------------------

def _setting_names() -> list[str]:
    source = inspect.getsource(load_settings)
    return re.findall(r'_env(?:_int|_float|_list)?\(\s*"([A-Z0-9_]+)"', source)


def test_settings_are_parsed_from_their_one_place():
    names = _setting_names()
    assert len(names) == len(set(names)), "a setting read twice"
    # one variable for each field of Settings: the regex missed none
    assert len(names) == len(dataclasses.fields(Settings))
    # and nothing else in the module reads the environment by name
    module_source = inspect.getsource(settings_module)
    other = set(re.findall(r'"([A-Z][A-Z0-9_]{3,})"', module_source)) - set(names)
    assert not other, f"names in backend/core/settings.py outside load_settings: {other}"


# -- docker/.env.example ---------------------------------------------------------------------

_SECTION = re.compile(r"^#\s*\[([a-z-]+)\]")
_VARIABLE = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def _env_example() -> dict[str, dict[str, tuple[str, bool]]]:
    """section -> name -> (value, active); a commented `# NAME=value` line is inactive."""
    sections: dict[str, dict[str, tuple[str, bool]]] = {}
    current = None
    previous = ""
    for line in (DOCKER / ".env.example").read_text().splitlines():
        section = _SECTION.match(line)
        if section:
            current = sections.setdefault(section.group(1), {})
            continue
        variable = _VARIABLE.match(line)
        if variable:
            commented, name, value = variable.groups()
            assert current is not None, f"{name} before the first [section]"
            assert name not in current, f"{name} twice in .env.example"
            # a one-line comment above each variable (or above its commented line)
            assert previous.startswith("#") and not _VARIABLE.match(previous), \
                f"{name} has no comment line above it"
            current[name] = (value, not commented)
        previous = line
    return sections


def test_env_example_sections():
    assert set(_env_example()) == {"label-studio", "backend-image", "aesemo"}


def test_env_example_lists_every_setting_and_only_settings():
    aesemo = _env_example()["aesemo"]
    assert set(aesemo) == set(_setting_names())


def test_env_example_values_are_the_defaults(monkeypatch):
    for name in _setting_names():
        monkeypatch.delenv(name, raising=False)
    defaults = Settings()
    assert load_settings() == defaults
    for name, (value, _active) in _env_example()["aesemo"].items():
        monkeypatch.setenv(name, value)
        assert load_settings() == defaults, f"{name}={value} in .env.example is not the default"
        monkeypatch.delenv(name)


def test_settings_compose_sets_are_commented_out_in_env_example(compose):
    """environment: wins over env_file, so a value for them in .env would be silently ignored."""
    aesemo = _env_example()["aesemo"]
    for service in ("backend", "worker"):
        for name, value in _env(compose["services"][service]).items():
            if name in aesemo and aesemo[name][1]:
                # only a pass-through of .env's own value (or of a fallback) may stay active
                assert value is not None and f"${{{name}" in value, \
                    f"{name}: compose sets {value!r}, .env.example sets it too"


def test_label_studio_variables_are_used_by_compose():
    text = (DOCKER / "compose.yaml").read_text()
    for name in _env_example()["label-studio"]:
        assert f"${{{name}" in text, f"{name} of .env.example is not used in compose.yaml"


def test_every_compose_variable_is_in_env_example():
    text = (DOCKER / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    listed = {name for section in _env_example().values() for name in section}
    assert used <= listed, f"compose.yaml uses variables .env.example lacks: {used - listed}"


def test_setup_hostname_is_reachable_from_backend(compose):
    """Label Studio's --host is the hostname /setup sends; backend and worker fetch images there."""
    value, _ = _env_example()["label-studio"]["LABEL_STUDIO_HOST"]
    assert value == LS_URL
    command = compose["services"]["label-studio"]["command"]
    command = command if isinstance(command, list) else shlex.split(command)
    host = command[command.index("--host") + 1]
    assert host == "${LABEL_STUDIO_HOST:-%s}" % LS_URL


# -- compose.yaml ----------------------------------------------------------------------------

def test_services_exist(compose):
    assert set(SERVICES) <= set(compose["services"])


def test_env_of_backend_and_worker_is_settings(compose):
    settings = set(_setting_names())
    for service in ("backend", "worker"):
        svc = compose["services"][service]
        names = set(_env(svc))
        assert names <= settings, f"{service}: not settings: {names - settings}"
        assert svc.get("env_file") in (".env", [".env"]) or \
            [e.get("path") for e in svc["env_file"]] == [".env"]
        env = _env(svc)
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["LABEL_STUDIO_URL"] == LS_URL
        assert env["AESEMO_DATA_DIR"] == "/data"
        # the backend authenticates with the admin's legacy token unless given its own key
        assert "${LABEL_STUDIO_USER_TOKEN}" in env["LABEL_STUDIO_API_KEY"]
    # whatever backend and worker get from .env: settings, and the two image variables
    for name in _env_example()["backend-image"]:
        assert name in IMAGE_VARIABLES
    assert set(_env_example()["backend-image"]) == IMAGE_VARIABLES


def test_volumes_declared_and_used(compose):
    declared = set(compose.get("volumes") or {})
    used = set()
    for service in compose["services"].values():
        for source in _volumes(service).values():
            if source and not source.startswith((".", "/", "~", "$")):
                used.add(source)
    assert used == declared, f"declared {declared}, used {used}"
    services = compose["services"]
    # Redis's append-only file
    assert _volumes(services["redis"]).get("/data") in declared
    # Label Studio's database and uploads
    ls_env = _env(services["label-studio"])
    assert _volumes(services["label-studio"]).get(ls_env["LABEL_STUDIO_BASE_DATA_DIR"]) in declared
    # one data volume, at AESEMO_DATA_DIR, in backend and worker
    data_dir = _env(services["backend"])["AESEMO_DATA_DIR"]
    assert _env(services["worker"])["AESEMO_DATA_DIR"] == data_dir
    backend_volume = _volumes(services["backend"]).get(data_dir)
    assert backend_volume in declared
    assert _volumes(services["worker"]).get(data_dir) == backend_volume
    assert backend_volume not in (_volumes(services["redis"]).get("/data"),
                                  _volumes(services["label-studio"]).get("/label-studio/data"))


def test_ports(compose):
    services = compose["services"]
    assert ("8080", "8080") in _ports(services["label-studio"])
    assert ("9090", "9090") in _ports(services["backend"])
    assert not _ports(services["redis"]), "Redis should stay on the compose network"


def test_health_checks(compose):
    services = compose["services"]
    assert "/health" in _healthcheck_command(services["label-studio"])
    assert "8080" in _healthcheck_command(services["label-studio"])
    assert _healthcheck_command(services["redis"]) == "redis-cli ping"
    assert "aesemo-healthcheck" in _healthcheck_command(services["backend"])
    assert "/health" in _healthcheck_command(services["backend"])
    for service in ("backend", "worker"):
        depends = services[service]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy"


def test_redis_appendonly(compose):
    redis = compose["services"]["redis"]
    assert str(redis["image"]).split(":")[0] == "redis" and str(redis["image"]).startswith("redis:7")
    command = redis["command"]
    command = command if isinstance(command, list) else shlex.split(command)
    assert command[command.index("--appendonly") + 1] == "yes"


def test_label_studio(compose):
    ls = compose["services"]["label-studio"]
    assert ls["image"] == "heartexlabs/label-studio:1.23.2"
    env = _env(ls)
    assert env["ML_BLOCK_LOCAL_IP"] == "false"
    assert env["SSRF_PROTECTION_ENABLED"] == "false"
    assert env["COLLECT_ANALYTICS"] == "false"
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert env["LOCAL_FILES_SERVING_ENABLED"] == "true"
    for name in ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN"):
        assert f"${{{name}" in env[name], f"{name} should come from .env"
    # the local-files root is mounted, and outside /label-studio (the entrypoint re-owns that)
    root = env["LOCAL_FILES_DOCUMENT_ROOT"]
    assert root in _volumes(ls) and not root.startswith("/label-studio")
    command = ls["command"]
    command = command if isinstance(command, list) else shlex.split(command)
    assert command[:2] == ["label-studio", "start"]
    assert "--host" in command


def test_worker_gpu_reservation(compose):
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    device = devices[0]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert device.get("count") in (1, "all") or device.get("device_ids")


def test_gpus_override_pins_one_gpu_per_worker():
    gpus = _load_yaml(DOCKER / "compose.gpus.yaml")
    ids = []
    for name, service in gpus["services"].items():
        assert name == "worker" or service["extends"] == {"file": "compose.yaml", "service": "worker"}
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and "count" not in device
        ids.extend(device["device_ids"])
    assert len(ids) >= 2 and len(set(ids)) == len(ids)


def test_builds_point_at_the_dockerfiles(compose):
    for service, dockerfile in (("backend", "backend.Dockerfile"), ("worker", "worker.Dockerfile")):
        build = compose["services"][service]["build"]
        assert (DOCKER / build["context"]).resolve() == ROOT
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKER / dockerfile


# -- the Dockerfiles -------------------------------------------------------------------------

def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def _image_env(instructions) -> dict[str, str]:
    env = {}
    for keyword, rest in instructions:
        if keyword == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def _cmd_argv(instructions) -> list[str]:
    (cmd,) = [rest for keyword, rest in instructions if keyword == "CMD"]
    if cmd.startswith("["):
        argv = json.loads(cmd)
        if argv[:2] in (["sh", "-c"], ["/bin/sh", "-c"]):
            argv = shlex.split(argv[2])
    else:
        argv = shlex.split(cmd)
    if argv and argv[0] == "exec":
        argv = argv[1:]
    return argv


@pytest.mark.parametrize("name,subcommand", [("backend", "serve"), ("worker", "worker")])
def test_dockerfile_cmd_is_an_aesemo_subcommand(name, subcommand):
    from backend.cli import build_parser  # imports torch: only this test pays for it
    instructions = _instructions(DOCKER / f"{name}.Dockerfile")
    env = _image_env(instructions)
    argv = _cmd_argv(instructions)
    assert argv[0] == "aesemo"
    # the shell expands ${VAR} from the image's ENV (or compose's environment)
    expanded = []
    for arg in argv[1:]:
        for var in re.findall(r"\$\{(\w+)\}", arg):
            assert var in env, f"{var} in CMD has no ENV default"
            arg = arg.replace("${%s}" % var, env[var])
        expanded.append(arg)
    args = build_parser().parse_args(expanded)  # exits (SystemExit) on unknown flags or commands
    assert args.command == subcommand
    if subcommand == "serve":
        assert (args.host, args.port) == ("0.0.0.0", 9090)
        assert "${AESEMO_WORKERS}" in argv and "${AESEMO_THREADS}" in argv
        assert set(_env_example()["backend-image"]) == IMAGE_VARIABLES
        for var in IMAGE_VARIABLES:  # .env.example repeats the image's defaults
            assert _env_example()["backend-image"][var][0] == env[var]


@pytest.mark.parametrize("name", ["backend", "worker"])
def test_dockerfile_basics(name):
    instructions = _instructions(DOCKER / f"{name}.Dockerfile")
    keywords = [keyword for keyword, _ in instructions]
    assert [rest for keyword, rest in instructions if keyword == "FROM"] == ["python:3.11-slim"]
    # the last USER before CMD is not root
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert keywords.index("CMD") > len(keywords) - 1 - keywords[::-1].index("USER")
    env = _image_env(instructions)
    assert env["AESEMO_DATA_DIR"] == "/data"
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert "docker/requirements.txt" in " ".join(rest for keyword, rest in instructions if keyword == "COPY")
    assert "-r /tmp/requirements.txt" in runs
    # every COPY source exists and passes the Dockerfile's own .dockerignore
    ignore = (DOCKER / f"{name}.Dockerfile.dockerignore").read_text().splitlines()
    for keyword, rest in instructions:
        if keyword == "COPY" and not rest.startswith("--from"):
            for source in shlex.split(rest)[:-1]:
                assert (ROOT / source).exists(), source
                assert f"!{source}" in ignore, f"{source} is not let through the .dockerignore"
    if name == "backend":
        args = {rest.partition("=")[0]: rest.partition("=")[2] for keyword, rest in instructions if keyword == "ARG"}
        assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
        assert '--index-url "$TORCH_INDEX_URL"' in runs
        assert "9090" in [rest for keyword, rest in instructions if keyword == "EXPOSE"]
        (healthcheck,) = [rest for keyword, rest in instructions if keyword == "HEALTHCHECK"]
        assert "/health" in healthcheck and "aesemo-healthcheck" in healthcheck
        assert "torch.version.cuda is None" in runs  # the build fails on a CUDA torch
    else:
        assert "assert torch.version.cuda" in runs  # the build fails on a CPU torch


# -- requirements ----------------------------------------------------------------------------

def _normalised(requirements) -> set[tuple[str, str]]:
    result = set()
    for line in requirements:
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            result.add((req.name.lower().replace("_", "-"), str(req.specifier)))
    return result


def test_requirements_repeat_pyproject_pins():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = _normalised(pyproject["project"]["dependencies"])
    got = _normalised((DOCKER / "requirements.txt").read_text().splitlines())
    assert got == wanted
    assert ("torch", "==2.14.1") in got and ("torchvision", "==0.29.1") in got


# -- README ----------------------------------------------------------------------------------

def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def test_readme_settings_table_lists_every_setting():
    rows = [line for line in _readme_section("Settings").splitlines() if line.startswith("| `")]
    listed = set()
    for row in rows:
        first_cell = row.split("|")[1]
        listed |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", first_cell))
    assert listed == set(_setting_names())


def test_readme_has_docker_sections():
    text = (ROOT / "README.md").read_text()
    order = [text.index(f"\n## {title}\n") for title in
             ("Settings", "Deploying with Docker", "Scaling out", "Tests and benchmarks")]
    assert order == sorted(order)


# -- docker/healthcheck.py -------------------------------------------------------------------

def _healthcheck_main():
    namespace: dict = {"__name__": "aesemo_healthcheck"}
    exec(compile((DOCKER / "healthcheck.py").read_text(), "healthcheck.py", "exec"), namespace)
    return namespace["main"]


@pytest.fixture
def health_server():
    state = {"status": "UP", "auth": None}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if state["auth"] and self.headers.get("Authorization") != state["auth"]:
                self.send_response(401)
                self.end_headers()
                return
            body = json.dumps({"status": state["status"], "model_class": "CrossBranchNet"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/health", state
    server.shutdown()
    server.server_close()


def test_healthcheck_script(health_server, monkeypatch):
    url, state = health_server
    main = _healthcheck_main()
    monkeypatch.delenv("BASIC_AUTH_USER", raising=False)
    monkeypatch.delenv("BASIC_AUTH_PASS", raising=False)
    assert main(["aesemo-healthcheck", url]) == 0
    state["status"] = "DOWN"
    assert main(["aesemo-healthcheck", url]) == 1
    state["status"] = "UP"
    # with Basic auth on, /health needs the credentials too: the script sends the service's own
    state["auth"] = "Basic " + base64.b64encode(b"ann:secret").decode()
    assert main(["aesemo-healthcheck", url]) == 1
    monkeypatch.setenv("BASIC_AUTH_USER", "ann")
    monkeypatch.setenv("BASIC_AUTH_PASS", "wrong")
    assert main(["aesemo-healthcheck", url]) == 1
    monkeypatch.setenv("BASIC_AUTH_PASS", "secret")
    assert main(["aesemo-healthcheck", url]) == 0
    # nothing listening
    assert main(["aesemo-healthcheck", "http://127.0.0.1:9/health"]) == 1
