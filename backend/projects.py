"""What the backend remembers of each Label Studio project: the label config, and where and
how to reach Label Studio (from `/setup`). Kept in Redis so every process shares it."""
from __future__ import annotations

import re
from dataclasses import dataclass

import redis

from .errors import RequestError

_PROJECT = re.compile(r"^(\d+)(?:\.\d+)?$")
PROJECTS_SET = "aesemo:projects"


def setup_key(project: str) -> str:
    """The hash of what /setup (or a webhook body) told about the project."""
    return f"aesemo:project:{project}:setup"


def project_id(value) -> str:
    """Label Studio sends a project as "<id>.<created timestamp>", an int, or an object with `id`."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool):
        value = None
    if isinstance(value, int) and value >= 0:
        return str(value)
    if isinstance(value, str) and _PROJECT.match(value.strip()):
        return _PROJECT.match(value.strip()).group(1)
    raise RequestError(f"\"project\" must be a Label Studio project id like \"1.1795782039\", got {value!r}")


@dataclass(frozen=True)
class ProjectContext:
    project: str
    label_config: str | None = None
    hostname: str | None = None
    access_token: str | None = None


class ProjectStore:
    def __init__(self, client: redis.Redis):
        self.redis = client

    def remember(self, project: str, label_config: str | None, hostname: str | None, access_token: str | None) -> None:
        fields = {"label_config": label_config, "hostname": hostname, "access_token": access_token}
        fields = {k: v for k, v in fields.items() if v}
        if fields:
            self.redis.hset(setup_key(project), mapping=fields)
        self.redis.sadd(PROJECTS_SET, project)

    def remember_setup(self, project: str, label_config: str, hostname: str | None,
                       access_token: str | None) -> None:
        """What /setup sent. Its hostname and access_token are kept as a pair, replaced together
        whenever a /setup names either: the token goes back only to the host it came with, so a
        later /setup that names only a hostname must not inherit Label Studio's token."""
        key = setup_key(project)
        pipe = self.redis.pipeline()  # MULTI: no reader sees a new hostname with the old token
        pipe.hset(key, "label_config", label_config)
        if hostname or access_token:
            pipe.hdel(key, "hostname", "access_token")
            pipe.hset(key, mapping={k: v for k, v in (("hostname", hostname), ("access_token", access_token)) if v})
        pipe.sadd(PROJECTS_SET, project)
        pipe.execute()

    def get(self, project: str) -> ProjectContext:
        stored = self.redis.hgetall(setup_key(project))
        return ProjectContext(project=project, label_config=stored.get("label_config"),
                              hostname=stored.get("hostname"), access_token=stored.get("access_token"))

    def known(self) -> list[str]:
        return sorted(self.redis.smembers(PROJECTS_SET), key=int)
