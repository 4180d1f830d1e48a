"""Annotation events from `/webhook` in one Redis round trip.

For an ANNOTATION_CREATED / _UPDATED / ANNOTATIONS_CREATED event whose body carries the
project's label config (Label Studio sends the whole project object), one Lua script does what
`record_event`, `ProjectStore.remember_label_config` and `VoteStore.apply` do one after the other otherwise:
append the event to the audit stream, store the label config if it differs from the stored one,
and apply each vote, with the Lua functions those use (the same rules). Atomic, and written to the
AOF like every other command. Anything else (other actions, bodies without a label config,
auto-training on) takes the step-by-step path; `LabelStudioBackend.webhook` decides which before
anything is stored.
"""
from __future__ import annotations

import os
import threading

import redis
from redis.exceptions import NoScriptError

from backend.core import keys
from backend.labelstudio.projects import REMEMBER_LABEL_CONFIG_LUA
from backend.labelstudio.webhook_events import RECORD_EVENT_LUA, event_json
from backend.votes.store import APPLY_VOTE_LUA, Vote, vote_args, vote_keys

# KEYS: events stream, project setup hash, projects set, the five of `vote_keys`, then task:{t}
#       of each vote
# ARGV: event JSON, project id, label config ('' = leave as stored), then five per vote
#       (`vote_args`)
_INGEST = RECORD_EVENT_LUA + REMEMBER_LABEL_CONFIG_LUA + APPLY_VOTE_LUA + """
local out = {record_event(KEYS[1], ARGV[1])}
if ARGV[3] ~= '' then remember_label_config(KEYS[2], KEYS[3], ARGV[2], ARGV[3]) end
for i = 0, (#ARGV - 3) / 5 - 1 do
  local a = 4 + 5 * i
  out[#out + 1] = apply_vote(KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9 + i],
                             ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4])
end
return out
"""


class Ingest:
    def __init__(self, client: redis.Redis):
        self._client = client
        self._script = client.register_script(_INGEST)
        self._held = threading.local()

    def __call__(self, event: dict, label_config: str, votes: list[tuple[Vote, str | None]]) -> list[str]:
        """Records `event`, remembers `label_config` ('' for none), applies the votes (each with its task's
        image URL or None); returns each vote's outcome, as `VoteStore.apply` does."""
        project = event["project"]
        names = [keys.EVENTS, keys.setup(project), keys.PROJECTS] + vote_keys(project)
        args = [event_json(event), project, label_config]
        for vote, image in votes:
            names.append(keys.task_votes(project, vote.task))
            args += vote_args(vote, image)
        try:
            outcomes = self._evalsha(len(names), *names, *args)[1:]
        except NoScriptError:  # a restarted (or flushed) Redis forgot the script
            self._script.sha = self._client.script_load(self._script.script)
            outcomes = self._evalsha(len(names), *names, *args)[1:]
        return outcomes

    def _evalsha(self, *args):
        """EVALSHA on a connection this thread holds for good, not through the client: its
        per-command pool checkout, retry and instrumentation cost redis-py 8 about 70 µs of
        CPU, a fair share of a webhook's. On a broken connection, once more on a new one (as
        the client's retry would: a repeated event changes nothing but one more stream entry)."""
        held = self._held
        if getattr(held, "pid", None) != os.getpid():  # none yet in this thread, or a forked process
            held.conn, held.pid = self._client.connection_pool.make_connection(), os.getpid()
        for attempt in (1, 2):
            try:
                held.conn.send_command("EVALSHA", self._script.sha, *args)
                return held.conn.read_response()
            except redis.ResponseError:  # an error answer, read whole: the connection is fine
                raise
            except (redis.ConnectionError, redis.TimeoutError):
                held.conn.disconnect()  # the next send_command connects again
                if attempt == 2:
                    raise
            except BaseException:  # whatever else, no half-read answer may stay on the connection
                held.conn.disconnect()
                raise
