"""Annotation events from `/webhook` in one Redis round trip.

For an ANNOTATION_CREATED / _UPDATED / ANNOTATIONS_CREATED event whose body carries the
project's label config (Label Studio sends the whole project object), one Lua script does what
`record_event`, `ProjectStore.remember` and `VoteStore.apply` do one after the other otherwise:
append the event to the audit stream, store the label config if it differs from the stored one,
and apply each vote with the same rules (`votes.APPLY_VOTE_LUA`). Atomic, and written to the
AOF like every other command. Anything else (other actions, bodies without a label config,
auto-training on, anything to refuse) takes the step-by-step path.
"""
from __future__ import annotations

import os
import threading

import redis
from redis.exceptions import NoScriptError

from backend.labelstudio.projects import PROJECTS_SET, setup_key
from backend.votes.store import APPLY_VOTE_LUA, Vote, VoteStore, key
from backend.labelstudio.webhook_events import EVENTS_KEPT, EVENTS_STREAM, event_json

# KEYS: events stream, project setup hash, projects set, votes, vote_times, tombstones,
#       deleted_tasks, images, then task:{t} of each vote
# ARGV: event JSON, stream cap, project id, label config ('' = leave as stored), then five per
#       vote: annotation id, updated_at (microseconds), record, task id, image URL ('' for none)
_INGEST = APPLY_VOTE_LUA + """
local out = {redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'event', ARGV[1])}
if ARGV[4] ~= '' and redis.call('HGET', KEYS[2], 'label_config') ~= ARGV[4] then
  redis.call('HSET', KEYS[2], 'label_config', ARGV[4])
  redis.call('SADD', KEYS[3], ARGV[3])
end
for i = 0, (#ARGV - 4) / 5 - 1 do
  local a = 5 + 5 * i
  out[#out + 1] = apply_vote(KEYS[4], KEYS[5], KEYS[6], KEYS[9 + i], KEYS[7], KEYS[8],
                             ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4])
end
return out
"""


class Ingest:
    def __init__(self, client: redis.Redis):
        self._client = client
        self._script = client.register_script(_INGEST)
        self._held = threading.local()
        self._votes = VoteStore(client)

    def __call__(self, event: dict, label_config: str, votes: list[tuple[Vote, str | None]]) -> list[str]:
        """Records `event`, remembers `label_config`, applies the votes (each with its task's
        image URL or None); returns each vote's outcome, as `VoteStore.apply` does."""
        project = event["project"]
        keys = [EVENTS_STREAM, setup_key(project), PROJECTS_SET, key(project, "votes"), key(project, "vote_times"),
                key(project, "tombstones"), key(project, "deleted_tasks"), key(project, "images")]
        args = [event_json(event), EVENTS_KEPT, project, label_config]
        for vote, image in votes:
            keys.append(key(project, f"task:{vote.task}"))
            args += [vote.annotation, vote.updated_us, vote.record(), vote.task, image or ""]
        try:
            outcomes = self._evalsha(len(keys), *keys, *args)[1:]
        except NoScriptError:  # a restarted (or flushed) Redis forgot the script
            self._script.sha = self._client.script_load(self._script.script)
            outcomes = self._evalsha(len(keys), *keys, *args)[1:]
        # a vote whose stored time an older version wrote as text: VoteStore.apply upgrades
        # the project's times and applies it again, by the same rule
        return [self._votes.apply(project, vote, image) if outcome == "legacy" else outcome
                for outcome, (vote, image) in zip(outcomes, votes)]

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
