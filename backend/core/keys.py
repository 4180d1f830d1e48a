"""Every Redis key (and the pub/sub channel) the backend uses; code and tests name them only here.

Per project p, under `aesemo:p:{p}:` (what the votes and jobs hold):
    votes            hash    annotation id -> vote record (JSON, sorted keys)
    vote_times       hash    annotation id -> updated_at in microseconds since the epoch
    task:{t}         set     annotation ids of task t
    tombstones       set     deleted annotation ids (a late create must not revive them)
    deleted_tasks    set     deleted task ids (their votes are gone, late events ignored)
    images           hash    task id -> image URL (for the training snapshot)
    policy           string  the consensus policy (JSON), when the admin changed it
    new_labels       string  labels agreed since the last snapshot (the auto-training counter)
    job:pending      string  id of the queued training job (a new request merges into it)
    job:running      string  id of the running training job
    jobs             list    training job ids, newest first
    refused          list    refused training requests (JSON: reason, time, who asked), newest first, capped
    shown            hash    task id -> the suggestion its annotators are shown (JSON: version, class
                             per task type, how: text or prefilled)
    submit           lock    serialises submitting training jobs
    training         lock    one training per project at a time; holds the job id

Per project p, under `aesemo:project:{p}:` (what the project is and serves):
    setup            hash    label_config, and /setup's hostname and access_token
    current          string  name of the model version the project serves
    ls_followed      string  the version Label Studio's project was found sorting by (expires: recheck)
    ls_follow        lock    one thread at a time makes it so
    annotators       hash    user id -> name or email from Label Studio's users API (expires)
    annotators:retry string  set while Label Studio is not asked again for the names (expires)
    predictions:{v}  hash    task id -> version v's prediction (JSON), from /predict and the refresh
                             job; expires AESEMO_PREDICTION_TTL after its last write
    refreshed:{v}    set     task ids whose version-v prediction the refresh job wrote into Label
                             Studio (a rerun skips them); same expiry
    refresh:pending  string  id of the queued prediction-refresh job (a new request merges into it)
    refresh:jobs     list    prediction-refresh job ids, newest first (capped)
    refresh:submit   lock    serialises submitting refresh jobs

Global:
    aesemo:projects         set     ids of the projects the backend knows
    aesemo:events           stream  recent webhook events (audit; capped in entries and bytes)
    aesemo:job:{id}:cancel  string  set (for a day) when a running job is asked to stop
    aesemo:versions         channel a project's new current version, for every serving process

Why two per-project prefixes: deployed backends hold data under both, and a key's name is
where that data is found. Renaming one would orphan the stored votes, jobs or setup of every
running deployment; the prefixes stay as they are, and this module is the one place to read
them.
"""
from __future__ import annotations

_DATA = "aesemo:p:{}:"
_PROJECT = "aesemo:project:{}:"

PROJECTS = "aesemo:projects"
EVENTS = "aesemo:events"
VERSION_CHANNEL = "aesemo:versions"
BASE_MODEL = "aesemo:base_model"   # the folder `aesemo base set` registered


def votes(project: str) -> str:
    return _DATA.format(project) + "votes"


def vote_times(project: str) -> str:
    return _DATA.format(project) + "vote_times"


def task_votes_prefix(project: str) -> str:
    """What `task_votes` puts before the task id (a Lua script builds the key from a vote)."""
    return _DATA.format(project) + "task:"


def task_votes(project: str, task) -> str:
    return f"{task_votes_prefix(project)}{task}"


def tombstones(project: str) -> str:
    return _DATA.format(project) + "tombstones"


def deleted_tasks(project: str) -> str:
    return _DATA.format(project) + "deleted_tasks"


def images(project: str) -> str:
    return _DATA.format(project) + "images"


def policy(project: str) -> str:
    return _DATA.format(project) + "policy"


def new_labels(project: str) -> str:
    return _DATA.format(project) + "new_labels"


def pending_job(project: str) -> str:
    return _DATA.format(project) + "job:pending"


def running_job(project: str) -> str:
    return _DATA.format(project) + "job:running"


def job_history(project: str) -> str:
    return _DATA.format(project) + "jobs"


def refused_requests(project: str) -> str:
    return _DATA.format(project) + "refused"


def shown_suggestions(project: str) -> str:
    return _DATA.format(project) + "shown"


def submit_lock(project: str) -> str:
    return _DATA.format(project) + "submit"


def training_lock(project: str) -> str:
    return _DATA.format(project) + "training"


def setup(project: str) -> str:
    return _PROJECT.format(project) + "setup"


def current_version(project: str) -> str:
    return _PROJECT.format(project) + "current"


def ls_followed(project: str) -> str:
    return _PROJECT.format(project) + "ls_followed"


def ls_follow_lock(project: str) -> str:
    return _PROJECT.format(project) + "ls_follow"


def annotator_names(project: str) -> str:
    return _PROJECT.format(project) + "annotators"


def annotator_names_retry(project: str) -> str:
    return _PROJECT.format(project) + "annotators:retry"


def job_cancel(job_id: str) -> str:
    return f"aesemo:job:{job_id}:cancel"


def predictions(project: str, version: str) -> str:
    return _PROJECT.format(project) + f"predictions:{version}"


def refresh_pending(project: str) -> str:
    return _PROJECT.format(project) + "refresh:pending"


def refresh_jobs(project: str) -> str:
    return _PROJECT.format(project) + "refresh:jobs"


def refresh_submit_lock(project: str) -> str:
    return _PROJECT.format(project) + "refresh:submit"
