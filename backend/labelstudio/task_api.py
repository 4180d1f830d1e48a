"""The few Label Studio 1.23.2 API calls the prediction refresh makes, through the SDK's client
(backend/labelstudio/client.py's `sdk_client`: its token rule and address guard):

- the project's tasks, page by page (`GET /api/tasks?project=P&fields=all`, the Data Manager's
  list with each task's predictions), all listed before anything is written, so that writes cannot
  move tasks between pages;
- deleting a set of tasks' predictions (the Data Manager action `delete_tasks_predictions`);
- importing predictions in bulk (`POST /api/projects/P/import/predictions`, one call a batch);
- reading a task's data (`GET /api/tasks/T`) and replacing it (`PATCH /api/tasks/T`: Label Studio
  stores the `data` sent, whole), to write the suggestion text the label config shows.
"""
from __future__ import annotations

from label_studio_sdk import LabelStudio

from backend.core.errors import UpstreamError

TASK_PAGE = 500


def _call(client: LabelStudio, method: str, path: str, what: str, **kwargs):
    response = client._client_wrapper.httpx_client.request(path, method=method, **kwargs)
    if response.status_code >= 300:
        raise UpstreamError(f"Label Studio: {what} answered HTTP {response.status_code}")
    return response.json() if response.content else None


def list_tasks(client: LabelStudio, project: str) -> list[dict]:
    """Every task of the project: id, data, whether Label Studio counts it labelled, and the model
    versions of the predictions it holds now (what is there, whoever wrote it)."""
    tasks, page = [], 1
    while True:
        body = _call(client, "GET", "api/tasks/", f"the task list of project {project}",
                     params={"project": int(project), "page": page, "page_size": TASK_PAGE, "fields": "all"})
        listed = body.get("tasks", []) if isinstance(body, dict) else body
        tasks += [{"id": t["id"], "data": t.get("data"), "is_labeled": bool(t.get("is_labeled")),
                   "prediction_versions": _prediction_versions(t)} for t in listed]
        total = body.get("total", len(tasks)) if isinstance(body, dict) else len(tasks)
        if not listed or len(tasks) >= total:
            return tasks
        page += 1


def _prediction_versions(task: dict) -> set[str]:
    """The model versions of a listed task's predictions: its `predictions` (fields=all), or the
    Data Manager's `predictions_model_versions` column when only that came."""
    predictions = task.get("predictions")
    if isinstance(predictions, list):
        return {str(p.get("model_version")) for p in predictions if isinstance(p, dict)}
    versions = task.get("predictions_model_versions") or []
    if isinstance(versions, str):  # SQLite's GROUP_CONCAT
        versions = versions.split(",")
    return {str(v) for v in versions if v}


def delete_predictions(client: LabelStudio, project: str, task_ids: list[int]) -> None:
    _call(client, "POST", "api/dm/actions", f"deleting predictions in project {project}",
          params={"id": "delete_tasks_predictions", "project": int(project)},
          json={"selectedItems": {"all": False, "included": list(task_ids)}})


def import_predictions(client: LabelStudio, project: str, predictions: list[dict]) -> int:
    """`predictions`: {"task", "result", "score", "model_version"} each; the count created."""
    body = _call(client, "POST", f"api/projects/{int(project)}/import/predictions",
                 f"importing predictions into project {project}", json=predictions)
    return int((body or {}).get("created", len(predictions)))


def task_data(client: LabelStudio, task_id: int) -> dict | None:
    """The task's data as Label Studio holds it now (None: not an object)."""
    body = _call(client, "GET", f"api/tasks/{int(task_id)}", f"reading task {task_id}")
    data = body.get("data") if isinstance(body, dict) else None
    return data if isinstance(data, dict) else None


def replace_task_data(client: LabelStudio, task_id: int, data: dict) -> None:
    """The task's data becomes `data`, whole (keys left out are gone)."""
    _call(client, "PATCH", f"api/tasks/{int(task_id)}", f"updating the data of task {task_id}", json={"data": data})
