"""The Label Studio ML backend protocol, in one class: what `/health`, `/setup`, `/predict`,
`/webhook` and the legacy `/train` do, with bodies in and dicts out (no Flask in sight). It reads
as label-studio-ml-backend's `model.py` does: `setup` names the served version, `predict` answers
tasks, and webhooks become votes or training requests."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import redis

from model.version import META_FILE, is_trained

from backend.core.errors import Conflict, DomainError, InvalidInput, NotFound, TooLarge, Unavailable, Unprocessable
from backend.core.metrics import IMAGE_FAILURES, PREDICTIONS, WEBHOOK_EVENTS
from backend.core.redis_connection import reachable
from backend.core.settings import Settings
from backend.fetch import tokens as ls_auth
from backend.fetch.fetcher import ImageFetcher
from backend.labelstudio.client import project_studio
from backend.labelstudio.follow import VersionFollower
from backend.labelstudio.label_config import ProjectLabels
from backend.labelstudio.projects import ProjectContext, project_id
from backend.labelstudio.webhook_events import parse_event, record_event
from backend.serving.hotswap import HotSwap
from backend.serving.models import ServedModel
from backend.serving.predict import BUDGET_KIND, predict_tasks
from backend.serving.prediction_store import VersionPredictions, stored_then_predicted, task_id
from backend.serving.refresh_queue import try_submit_refresh
from backend.serving.registry import all_versions, base_for, describe_base, resolve_current, version_meta
from backend.serving.suggestion_text import shown_in_task, suggestion_text, text_is_current
from backend.serving.suggestions import (WITHHELD_FIELD, WITHHELD_TYPES_FIELD, WithheldLog, withheld_reason,
                                         shown_result, withheld_types)
from backend.services.projects import Projects
from backend.services.training import TrainingService, training_refused
from backend.votes.project_consensus import ProjectConsensus
from backend.votes.shown import remember_shown_many

log = logging.getLogger(__name__)

MODEL_CLASS = "CrossBranchNet"
REDIS_DOWN_EFFECT = ("Redis is unreachable: /predict and /setup answer from the models this process holds; "
                     "webhooks, consensus, jobs and versions answer 503 until it is back")
_VOTE_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")


class LabelStudioBackend:
    def __init__(self, settings: Settings, client: redis.Redis, projects: Projects, swap: HotSwap,
                 consensus: ProjectConsensus, training: TrainingService, follower: VersionFollower):
        self.settings, self.redis, self.projects = settings, client, projects
        self.swap, self.consensus, self.training = swap, consensus, training
        self.follower = follower
        self.fetcher = ImageFetcher(settings, Path(settings.data_dir) / "cache" / "downloads")
        self.withheld = WithheldLog()

    def health(self) -> dict:
        """UP whenever the process answers: Label Studio skips every prediction of a backend whose
        /health is not 200 UP, and predictions go on from memory without Redis. What is degraded
        is said beside it."""
        if reachable(self.redis):
            return {"status": "UP", "model_class": MODEL_CLASS, "redis": "up"}
        return {"status": "UP", "model_class": MODEL_CLASS, "redis": "down", "degraded": REDIS_DOWN_EFFECT}

    def versions(self) -> dict:
        """Every version folder this backend has (Label Studio's `GET /versions`)."""
        names, skipped = all_versions(self.settings)
        return {"versions": names, "skipped": skipped, "base_model": describe_base(self.redis, self.settings)}

    def _withheld(self, project: str | None, version: str, meta: dict | None) -> dict:
        """`{"no_suggestions": why}` when this version's suggestions are not sent, or
        `{"withheld_types": {type: why}}` for the task types whose held-out evidence is too thin;
        {} when every suggestion is sent."""
        reason = withheld_reason(self.settings, version, bool(meta) and is_trained(meta))
        if reason is not None:
            self.withheld.note(project, version, f"no suggestions: {reason}")
            return {WITHHELD_FIELD: reason}
        types = withheld_types(self.settings, meta or {})
        for task, why in types.items():
            self.withheld.note(project, f"{version} ({task})", f"no {task} suggestions: {why}")
        return {WITHHELD_TYPES_FIELD: types} if types else {}

    def setup(self, body) -> dict:
        body = _object(body)
        project = project_id(body.get("project"))
        schema = body.get("schema") or body.get("label_config")
        labels = self.projects.labels(schema)
        # checked before anything is stored: the admin page links to the hostname, and the
        # token goes into an Authorization header
        hostname, token = _hostname(body), _access_token(body)
        try:
            connected = self.projects.store.remember_setup(project, schema, hostname, token)
            version = self.projects.version_ref(project, labels)
            self.follower.on_setup(self.projects.store.get(project), version.name)
            if connected:
                try_submit_refresh(self.settings, project, "project connected")
            meta, _ = version_meta(version.folder) if (version.folder / META_FILE).is_file() else (None, None)
            return {"model_version": version.name, **self._withheld(project, version.name, meta)}
        except (redis.ConnectionError, redis.TimeoutError):
            return self._setup_from_memory(ProjectContext(project, schema, hostname, token), labels)

    def _setup_from_memory(self, context: ProjectContext, labels: ProjectLabels) -> dict:
        """/setup without Redis: Label Studio skips predicting for a backend whose /setup fails,
        so a project whose model this process holds goes on with it (the context kept here for
        /predict); any other project gets 503, not a made-up version name."""
        held = self.swap.get(context.project)
        if not (held and held.knows(labels.classes())):
            raise Unavailable("Redis is unavailable and this process holds no model for project "
                              f"{context.project}")
        self.projects.remember_context(context)
        return {"model_version": held.version, **self._withheld(context.project, held.version, held.predictor.meta)}

    def predict(self, body) -> dict:
        body = _object(body)
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise InvalidInput("body has no \"tasks\" list")
        if len(tasks) > self.settings.max_tasks_per_request:
            raise TooLarge(f"{len(tasks)} tasks in one request; the limit is "
                           f"{self.settings.max_tasks_per_request} (AESEMO_MAX_TASKS)")
        project = project_id(body.get("project")) if body.get("project") is not None else None
        context = self.projects.context(project)
        labels = self.projects.labels(body.get("label_config") or (context.label_config if context else None))
        if not tasks:
            return {"results": []}
        if project:
            self._note_tasks(project, tasks, labels)
        deadline = time.monotonic() + self.settings.predict_budget_s
        self.swap.priority.wait_for_loads()  # a version loading now answers this request
        served = self._model_for(project, labels)
        version_name = served.version
        withheld = self._withheld(project, version_name, served.predictor.meta)
        if WITHHELD_FIELD in withheld:
            return {"results": [[] for _ in tasks], "model_version": version_name, **withheld}

        results, failures, queued = self._stored_then_computed(project, context, tasks, labels, served, deadline)
        _log_failures(failures, self.settings.predict_budget_s)
        # tasks queued for the refresh job get their predictions soon: Label Studio gets [] for them
        # now, not an error (an error answer is what a timed-out batch would cost it)
        if failures and len(failures) == len(tasks) and not queued:
            raise Unprocessable(f"no task could be predicted: {failures[0].message}"
                                + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""),
                                details=[f.to_dict() for f in failures])
        PREDICTIONS.labels(version_name).inc(len(tasks) - len(failures))
        types = withheld.get(WITHHELD_TYPES_FIELD, {})
        shown = [shown_result(r, task_id(t), labels, types, self.settings.control_fraction)
                 for r, t in zip(results, tasks)]
        if project:
            self._remember_shown(project, tasks, shown, labels)
        self._queue_texts(project, context, labels, tasks, shown)
        reply = {"results": shown, "model_version": version_name, **withheld}
        if failures:
            reply["errors"] = [f.to_dict() for f in failures]
        if queued:
            reply["queued"] = len(queued)
        return reply

    def _remember_shown(self, project: str, tasks: list, shown: list, labels: ProjectLabels) -> None:
        """What the tasks' annotators are shown (Label Studio keeps /predict's answers as
        predictions and may pre-fill them; a task's data may show their text), for the votes to
        record; /predict goes on without Redis."""
        answered = {task_id(t): shown_in_task(labels, t, result) for t, result in zip(tasks, shown)
                    if task_id(t) is not None and result}
        try:
            remember_shown_many(self.redis, project, answered)
        except redis.RedisError as exc:
            log.debug("project %s: suggestions shown not remembered (%s)", project, type(exc).__name__)

    def _stored_then_computed(self, project: str | None, context, tasks: list, labels: ProjectLabels,
                              served: ServedModel, deadline: float) -> tuple[list, list, list]:
        """The store's predictions, then the model's for the rest within the budget; the tasks
        the budget left out are queued for a refresh job (their next /predict finds them stored).
        Returns the results, the failures and the ids of the tasks queued."""
        store = (VersionPredictions(self.redis, project, served.version, self.settings.prediction_ttl_s,
                                    redis_optional=True) if project else None)

        def fetch(url):
            return self.fetcher.fetch(url, hostname=context.hostname if context else None,
                                      access_token=context.access_token if context else None)

        def predict(missing: list):
            return predict_tasks(missing, labels, served.predictor, served.version, fetch,
                                 self.settings.predict_chunk_size, deadline, self.settings.uncertainty)

        results, failures = stored_then_predicted(store, tasks, labels, predict)
        budget_ids = (task_id(tasks[f.index]) for f in failures if f.kind == BUDGET_KIND)
        over_budget = [i for i in budget_ids if i is not None]
        queued = []
        if (project and over_budget and _reaches_label_studio(self.settings, context)
                and try_submit_refresh(self.settings, project, "tasks /predict had no time for", over_budget)):
            queued = over_budget
        return results, failures, queued

    def _queue_texts(self, project: str | None, context, labels: ProjectLabels, tasks: list, shown: list) -> None:
        """A refresh job for the answered tasks whose data does not show their suggestion's text
        (or shows one where none belongs): only the refresh writes task data, so the predictions
        Label Studio stores from /predict get their text from it."""
        untold = [task_id(task) for task, result in zip(tasks, shown)
                  if result and task_id(task) is not None
                  and not text_is_current(labels, task, suggestion_text(labels, result))]
        if project and untold and _reaches_label_studio(self.settings, context):
            try_submit_refresh(self.settings, project, "tasks without their suggestion text", untold)

    def _model_for(self, project: str | None, labels: ProjectLabels) -> ServedModel:
        """The project's current model: from this process's memory when it holds one for these
        class lists (no Redis needed), else resolved through the registry and made current."""
        held = self.swap.get(project) if project else None
        if held and held.knows(labels.classes()):
            return held
        try:
            version = (resolve_current(self.redis, self.settings, project, labels.classes()) if project
                       else base_for(self.redis, self.settings, labels.classes()))
        except redis.RedisError:
            raise Unavailable("no model in memory for this project and Redis is unavailable") from None
        if not project:
            return self.swap.models.load(version)  # the swap's cache: one per process
        served = self.swap.serve(project, version)
        if not served:
            raise Unavailable(f"model version {version.name} of project {project} cannot be loaded")
        return served

    def webhook(self, body) -> dict:
        """Every event goes into the audit stream; annotation events become votes, START_TRAINING
        a training request. One Redis script per vote keeps votes in order (backend/votes/store.py)."""
        event = parse_event(body)
        record_event(self.redis, event)
        answer = self._act_on(event, body)
        WEBHOOK_EVENTS.labels(event["action"]).inc()
        return {"status": "ok", "action": event["action"], **answer}

    def _act_on(self, event: dict, body: dict) -> dict:
        """Votes from annotation events; a training request from START_TRAINING."""
        action, project = event["action"], event["project"]
        if action == "START_TRAINING":
            self.projects.project_labels(project, body.get("project"))  # the body carries the label config
            try:
                queued = self.training.train(project, {}, "START_TRAINING")
            except DomainError as exc:  # the event itself was fine: say why no job, in the answer
                return {"training": training_refused(exc)}  # no `job`: Label Studio records none
            return {"training": queued, "job": queued["job_id"]}  # Label Studio records `job`
        if action == "TASKS_CREATED":
            labels = self.projects.known_labels(project, body.get("project"))
            return {"tasks_noted": self._note_tasks(project, body.get("tasks"), labels)}
        if action == "TASKS_DELETED":
            return {"votes_removed": self.consensus.votes.delete_tasks(project, [t["id"] for t in event["tasks"]])}
        if action not in _VOTE_ACTIONS + ("ANNOTATIONS_DELETED", "PROJECT_UPDATED"):
            return {}
        labels = self.projects.project_labels(project, body.get("project"))
        if action == "PROJECT_UPDATED":
            return {}
        if action == "ANNOTATIONS_DELETED":
            return {"deleted": self.consensus.delete_annotations(project, labels, event["annotations"])}
        return {"votes": [self.consensus.apply_annotation(project, labels, a, body.get("task"))
                          for a in _annotations(body)]}

    def _note_tasks(self, project: str, tasks, labels: ProjectLabels | None) -> int:
        """Remembers the tasks' ids (and image URLs) for the consensus counts; never fails the
        request it rides on."""
        try:
            return self.consensus.votes.note_task_list(project, tasks, labels.image_key if labels else None)
        except redis.RedisError as exc:
            log.warning("project %s: task ids not noted (%s)", project, type(exc).__name__)
            return 0

    def train(self, body) -> dict:
        """Label Studio's legacy POST /train (sent only with its feature flag off): the body's
        annotations are ignored, since the job resyncs from the export itself."""
        body = _object(body)
        project = project_id(body.get("project"))
        try:
            return self.training.train(project, {}, "legacy /train")
        except (Conflict, NotFound) as exc:  # recorded by train
            return training_refused(exc)


def _log_failures(failures: list, budget_s: float) -> None:
    over = 0
    for failure in failures:
        IMAGE_FAILURES.labels(failure.kind).inc()
        if failure.kind == BUDGET_KIND:
            over += 1  # one line for all of them: there may be thousands
        else:
            log.warning("no prediction for %s", failure.message)
    if over:
        log.warning("no prediction for %d tasks: the request's time budget of %g s "
                    "(AESEMO_PREDICT_BUDGET) was spent", over, budget_s)


def _reaches_label_studio(settings: Settings, context) -> bool:
    """Whether a refresh job could write into the project's Label Studio (an address and a token)."""
    studio = project_studio(settings, context) if context else None
    return bool(studio and studio.token)


def _annotations(body: dict) -> list:
    """A vote event's annotations: ANNOTATIONS_CREATED may carry a list."""
    return body["annotation"] if isinstance(body["annotation"], list) else [body["annotation"]]


def _object(body) -> dict:
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object")
    return body


MAX_HOSTNAME_CHARS = 2048
MAX_TOKEN_CHARS = 4096


def _hostname(body: dict) -> str | None:
    """/setup's `hostname`: Label Studio's address, an http(s) URL (absent or empty: none)."""
    value = body.get("hostname")
    if value is None or value == "":
        return None
    if not ls_auth.is_http_url(value) or len(value) > MAX_HOSTNAME_CHARS:
        raise InvalidInput("\"hostname\" must be Label Studio's address, an http(s) URL like "
                           f"\"http://label-studio:8080\" (no user info, query or fragment, at most "
                           f"{MAX_HOSTNAME_CHARS} characters)")
    return value


def _access_token(body: dict) -> str | None:
    """/setup's `access_token`: printable ASCII without spaces, as an Authorization header needs.
    Never quoted back: it is a secret even when malformed."""
    value = body.get("access_token")
    if value is None or value == "":
        return None
    if not (isinstance(value, str) and len(value) <= MAX_TOKEN_CHARS and value.isascii() and value.isprintable()
            and " " not in value):
        raise InvalidInput(f"\"access_token\" must be a Label Studio API token: printable ASCII without spaces, "
                           f"at most {MAX_TOKEN_CHARS} characters")
    return value
