"""What the backend remembers of each Label Studio project: the label config, and where and
how to reach Label Studio (from `/setup`). Kept in Redis so every process shares it."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from backend.core import keys
from backend.core.errors import InvalidInput
from backend.core.ids import as_id, id_from_text, shown

log = logging.getLogger(__name__)

# A label config from a webhook body or from Label Studio's API: written only when it differs,
# and the project is then known. /setup's hostname and token are written by `remember_setup` only.
# KEYS: the project's setup hash, the set of projects; ARGV: project id, label config
_REMEMBER_LABEL_CONFIG = """
if redis.call('HGET', KEYS[1], 'label_config') ~= ARGV[2] then
  redis.call('HSET', KEYS[1], 'label_config', ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[1])
end
"""


def project_id(value) -> str:
    """Label Studio sends a project as "<id>.<created timestamp>", an int, or an object with `id`.
    The answer is the id in its one canonical spelling ("7", never "007"): it names Redis keys."""
    if isinstance(value, dict):
        value = value.get("id")
    found = as_id(value)
    if isinstance(value, str):
        number, dot, stamp = value.strip().partition(".")
        if not dot or (stamp.isascii() and stamp.isdigit()):
            found = id_from_text(number)
    if found is None:
        raise InvalidInput(f"\"project\" must be a Label Studio project id (a positive integer below 2**63, "
                           f"or like \"1.1795782039\"), got {shown(value)}")
    return str(found)


@dataclass(frozen=True)
class ProjectContext:
    project: str
    label_config: str | None = None
    hostname: str | None = None
    access_token: str | None = None


class ProjectStore:
    def __init__(self, client: redis.Redis):
        self.redis = client
        self._remember_label_config = client.register_script(_REMEMBER_LABEL_CONFIG)

    def remember_label_config(self, project: str, label_config: str) -> None:
        """Stores `label_config` when it differs from the stored one (see _REMEMBER_LABEL_CONFIG)."""
        self._remember_label_config(keys=[keys.setup(project), keys.PROJECTS], args=[project, label_config])

    def remember_setup(self, project: str, label_config: str, hostname: str | None,
                       access_token: str | None) -> bool:
        """What /setup sent; True when the project was new to the backend. Its hostname and
        access_token are kept as a pair, replaced together whenever a /setup names either: the token
        goes back only to the host it came with, so a
        later /setup that names only a hostname must not inherit Label Studio's token."""
        setup = keys.setup(project)
        pipe = self.redis.pipeline()  # MULTI: no reader sees a new hostname with the old token
        pipe.hset(setup, "label_config", label_config)
        if hostname or access_token:
            pipe.hdel(setup, "hostname", "access_token")
            pipe.hset(setup, mapping={k: v for k, v in (("hostname", hostname), ("access_token", access_token)) if v})
        pipe.sadd(keys.PROJECTS, project)
        return bool(pipe.execute()[-1])

    def get(self, project: str) -> ProjectContext:
        stored = self.redis.hgetall(keys.setup(project))
        return ProjectContext(project=project, label_config=stored.get("label_config"),
                              hostname=stored.get("hostname"), access_token=stored.get("access_token"))

    def known(self) -> list[str]:
        return self.known_and_invalid()[0]

    def known_and_invalid(self) -> tuple[list[str], list[str]]:
        """(the projects, in id order; members of the set that are no project id). The second
        list can only hold what was written before ids were checked, or straight into Redis:
        it is shown, not fatal."""
        valid, invalid = [], []
        for member in self.redis.smembers(keys.PROJECTS):
            canonical = id_from_text(member) is not None and not member.startswith("0")
            (valid if canonical else invalid).append(member)
        invalid = [shown(m) for m in sorted(invalid, key=lambda m: (len(m), m))]
        if invalid:
            log.warning("%s holds entries that are not project ids, skipped: %s", keys.PROJECTS, ", ".join(invalid))
        return sorted(valid, key=int), invalid
