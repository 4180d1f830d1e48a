"""What would drift apart silently: the settings declared in backend/core/settings.py against the
docs' Settings page (docs/operators/settings.md), docker/.env.example and the environment
compose.yaml gives backend and worker; the images' commands against `aesemo`'s subcommands;
docker/requirements.txt against pyproject.toml's pins; and the health-check script against a small
HTTP server. Static checks (no Docker engine needed); what compose.yaml merely states (ports,
volumes, images) is not restated here."""
from __future__ import annotations

import base64
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

from backend.core.settings import Settings, env_text, load_settings, markdown_table, setting_fields

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
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


# -- what backend/core/settings.py declares ---------------------------------------------------

def _setting_names() -> list[str]:
    return [f.metadata["env"] for f in setting_fields()]


def test_each_setting_has_its_own_variable():
    names = _setting_names()
    assert len(names) == len(set(names)), "two settings read the same variable"


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
    example = _env_example()["aesemo"]
    for f in setting_fields():
        assert example[f.metadata["env"]][0] == env_text(f.default), f"{f.metadata['env']} is not the default"
    # and each of those texts parses back to the default
    for name, (value, _active) in example.items():
        monkeypatch.setenv(name, value)
    assert load_settings() == Settings()


def test_settings_compose_sets_are_commented_out_in_env_example(compose):
    """environment: wins over env_file, so a value for them in .env would be silently ignored."""
    aesemo = _env_example()["aesemo"]
    checked, clashes = 0, []
    for service in ("backend", "worker"):
        for name, value in _env(compose["services"][service]).items():
            checked += name in aesemo
            # only a pass-through of .env's own value (or of a fallback) may stay active
            if name in aesemo and aesemo[name][1] and (value is None or f"${{{name}" not in value):
                clashes.append(f"{service}: {name}: compose sets {value!r}, .env.example sets it too")
    assert checked, "compose sets no aesemo setting: this test would check nothing"
    assert not clashes, "\n".join(clashes)


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
    assert host == f"${{LABEL_STUDIO_HOST:-{LS_URL}}}"


# -- compose.yaml ----------------------------------------------------------------------------

def test_env_of_backend_and_worker_is_settings(compose):
    settings = set(_setting_names())
    for service in ("backend", "worker"):
        svc = compose["services"][service]
        names = set(_env(svc))
        assert names <= settings, f"{service}: not settings: {names - settings}"
        assert svc.get("env_file") in (".env", [".env"]) or \
            [e.get("path") for e in svc["env_file"]] == [".env"]
    # whatever else backend and worker get from .env: the two image variables
    assert set(_env_example()["backend-image"]) == IMAGE_VARIABLES


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


@pytest.mark.torch
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
            arg = arg.replace(f"${{{var}}}", env[var])
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
def test_dockerfile_copies_what_exists_and_installs_the_requirements(name):
    instructions = _instructions(DOCKER / f"{name}.Dockerfile")
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


# -- docs/operators/settings.md --------------------------------------------------------------

SETTINGS_PAGE = ROOT / "docs" / "operators" / "settings.md"


def test_settings_page_table_is_the_declaration():
    """Regenerate it with `python -m backend.core.settings --markdown`."""
    assert markdown_table() in SETTINGS_PAGE.read_text()


# -- docker/healthcheck.py -------------------------------------------------------------------

def _healthcheck_main():
    namespace: dict = {"__name__": "aesemo_healthcheck"}
    exec(compile((DOCKER / "healthcheck.py").read_text(), "healthcheck.py", "exec"), namespace)
    return namespace["main"]


@pytest.fixture
def health_server():
    state = {"status": "UP", "auth": None}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
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


@pytest.mark.torch
@pytest.mark.parametrize("name", ["backend", "worker"])
def test_dockerfile_fetches_imagenet_weights_at_build_unless_told_not_to(name):
    from backend.cli import build_parser  # imports torch: only this test pays for it
    instructions = _instructions(DOCKER / f"{name}.Dockerfile")
    assert ("ARG", "AESEMO_FETCH_WEIGHTS=1") in instructions
    [fetch] = [rest for keyword, rest in instructions if keyword == "RUN" and "fetch-weights" in rest]
    assert '[ "$AESEMO_FETCH_WEIGHTS" = 1 ]' in fetch
    argv = shlex.split(fetch.split("then", 1)[1].split(";")[0])
    args = build_parser().parse_args(argv[1:])
    assert argv[0] == "aesemo" and args.command == "fetch-weights" and "vgg16" in args.backbone
    # outside the data volume, which would hide what the image holds
    assert not _image_env(instructions)["TORCH_HOME"].startswith("/data")


# -- compose.scale.yaml ----------------------------------------------------------------------

def test_scale_out_compose_shares_no_volume_and_one_version_store():
    scale = _load_yaml(DOCKER / "compose.scale.yaml")
    services = scale["services"]
    stores = set()
    for name in ("backend", "worker"):
        assert services[name]["volumes"] == [], f"{name} must mount no shared volume"
        env = _env(services[name])
        assert env["AESEMO_VERSION_STORE"].startswith("s3://") and env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        stores.add(env["AESEMO_VERSION_STORE"])
    assert len(stores) == 1
    assert services["backend"]["ports"] == [] and services["lb"]["ports"] == ["127.0.0.1:9090:9090"]
    conf_mount = next(v for v in services["lb"]["volumes"] if v.endswith("default.conf:ro"))
    conf = (DOCKER / conf_mount.split(":")[0]).read_text()
    assert "http://backend:9090" in conf and "proxy_pass $replicas" in conf
    assert "minio-data" in scale["volumes"]
