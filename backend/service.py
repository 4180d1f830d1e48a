"""What each Label Studio endpoint does, with no Flask in sight: bodies in, dicts out."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis

from .errors import RequestError
from .images import ImageFetcher
from .label_config import LabelConfigError, ProjectLabels, parse_label_config
from .metrics import IMAGE_FAILURES, PREDICTIONS, WEBHOOK_EVENTS
from .model_holder import ModelHolder
from .predict import predict_tasks
from .projects import ProjectStore, project_id
from .registry import all_version_names, base_version_name, current_version_name, resolve_current
from .settings import Settings
from .webhooks import parse_event, record_event

log = logging.getLogger(__name__)

MODEL_CLASS = "CrossBranchNet"


class Backend:
    def __init__(self, settings: Settings, client: redis.Redis):
        self.settings = settings
        self.redis = client
        self.projects = ProjectStore(client)
        self.models = ModelHolder(settings.max_image_pixels)
        self.fetcher = ImageFetcher(settings, Path(settings.data_dir) / "cache" / "downloads")
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="image-fetch")

    def health(self) -> dict:
        return {"status": "UP", "model_class": MODEL_CLASS}

    def labels(self, label_config: str | None) -> ProjectLabels:
        if not label_config:
            raise RequestError("no label config: send \"label_config\" or call /setup for this project first")
        try:
            return parse_label_config(label_config, self.settings.aesthetic_control, self.settings.emotion_control)
        except LabelConfigError as exc:
            raise RequestError(f"label config: {exc}", status=422) from None

    def version_name(self, project: str, labels: ProjectLabels) -> str:
        return current_version_name(self.redis, project) or base_version_name(self.settings, labels.classes())

    def setup(self, body) -> dict:
        body = _object(body)
        project = project_id(body.get("project"))
        schema = body.get("schema") or body.get("label_config")
        labels = self.labels(schema)
        self.projects.remember(project, schema, _text(body, "hostname"), _text(body, "access_token"))
        return {"model_version": self.version_name(project, labels)}

    def predict(self, body) -> dict:
        body = _object(body)
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise RequestError("body has no \"tasks\" list")
        if len(tasks) > self.settings.max_tasks_per_request:
            raise RequestError(f"{len(tasks)} tasks in one request; the limit is "
                               f"{self.settings.max_tasks_per_request} (AESEMO_MAX_TASKS)", status=413)
        project = project_id(body.get("project")) if body.get("project") is not None else None
        context = self.projects.get(project) if project else None
        labels = self.labels(body.get("label_config") or (context.label_config if context else None))
        if not tasks:
            return {"results": []}
        version = (resolve_current(self.redis, self.settings, project, labels.classes()) if project
                   else _base(self.settings, labels))
        predictor = self.models.predictor(version)

        def fetch(url):
            return self.fetcher.fetch(url, hostname=context.hostname if context else None,
                                      access_token=context.access_token if context else None)

        results, failures = predict_tasks(tasks, labels, predictor, version.name, fetch, self.pool,
                                          self.settings.predict_chunk_size)
        for failure in failures:
            IMAGE_FAILURES.labels(failure.kind).inc()
            log.warning("no prediction for %s", failure.message)
        if failures and len(failures) == len(tasks):
            raise RequestError(f"no task could be predicted: {failures[0].message}"
                               + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""),
                               status=422, details=[f.to_dict() for f in failures])
        PREDICTIONS.labels(version.name).inc(len(tasks) - len(failures))
        reply = {"results": results, "model_version": version.name}
        if failures:
            reply["errors"] = [f.to_dict() for f in failures]
        return reply

    def webhook(self, body) -> dict:
        event = parse_event(body)
        record_event(self.redis, event)
        WEBHOOK_EVENTS.labels(event["action"]).inc()
        return {"status": "ok", "action": event["action"]}

    def versions(self) -> dict:
        return {"versions": all_version_names(self.settings)}


def _base(settings, labels):
    from .registry import ensure_base_version
    return ensure_base_version(settings, labels.classes())


def _object(body) -> dict:
    if not isinstance(body, dict):
        raise RequestError("body must be a JSON object")
    return body


def _text(body: dict, key: str) -> str | None:
    value = body.get(key)
    return value if isinstance(value, str) and value else None
