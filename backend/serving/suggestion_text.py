"""What annotators are shown of a prediction. Nothing is pre-selected (the project does not show
predictions to annotators): a pre-ticked choice is un-ticked by its own hotkey, so the natural key
presses of an annotator who agrees would leave a required question empty. The suggestion is a
line of text beside the choices instead, with the model's confidence in each class, e.g.
"model v0003 suggests: high 62 %, awe 31 %": the refresh writes it into the task's data under the
key the label config shows (ProjectLabels.suggestion_key), and the annotator presses the keys of
their own answer whatever it says.

A prediction that chooses no class (a control task's, or one whose task types are all withheld:
backend/serving/suggestions.py) shows no text.
"""
from __future__ import annotations

import math

from backend.labelstudio.label_config import ProjectLabels
from backend.votes.shown import suggestion_of


def suggested_classes(labels: ProjectLabels, prediction) -> dict[str, tuple[str, float | None]]:
    """{task type: (class, its probability)} for the task types the prediction chooses a class
    for, in the config's order (aesthetic, then emotion)."""
    items = prediction.get("result") if isinstance(prediction, dict) else None
    found = {}
    for kind, control in (("aesthetic", labels.aesthetic_control), ("emotion", labels.emotion_control)):
        item = next((i for i in items or () if isinstance(i, dict) and i.get("from_name") == control), None)
        choices = (item.get("value") or {}).get("choices") if item else None
        if isinstance(choices, list) and choices and isinstance(choices[0], str):
            score = item.get("score")
            found[kind] = (choices[0], float(score) if _probability(score) else None)
    return found


def _probability(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and 0 <= value <= 1


def suggestion_text(labels: ProjectLabels, prediction) -> str | None:
    """The line annotators read beside the choices, e.g. "model v0003 suggests: high 62 %, awe
    31 %" (each class with the model's probability, rounded to a whole percent); None when the
    prediction chooses no class (a control task's, or one whose types are all withheld)."""
    classes = suggested_classes(labels, prediction)
    if not classes:
        return None
    parts = [name if p is None else f"{name} {math.floor(p * 100 + 0.5)} %" for name, p in classes.values()]
    return f"model {prediction.get('model_version')} suggests: {', '.join(parts)}"


def shown_as_text(labels: ProjectLabels, prediction) -> dict | None:
    """What annotators are shown once the prediction's text is written (backend/votes/shown.py's
    record); None when it shows nothing."""
    classes = suggested_classes(labels, prediction)
    if not classes:
        return None
    return {"version": prediction.get("model_version"), "how": "text",
            **{kind: classes[kind][0] if kind in classes else None for kind in ("aesthetic", "emotion")}}


def shown_once_written(labels: ProjectLabels, prediction) -> dict | None:
    """What a task's annotators are shown of a prediction the refresh wrote: its text where the
    config shows one (the refresh writes it), else the prediction as Label Studio pre-fills it."""
    if labels.suggestion_key is not None:
        return shown_as_text(labels, prediction)
    return suggestion_of(prediction, labels, "prefilled")


def shown_in_task(labels: ProjectLabels, task, prediction) -> dict | None:
    """What the task's annotators are shown of `prediction`: its text when the task's data shows
    it, else the prediction as Label Studio pre-fills it (where the project shows predictions)."""
    text = suggestion_text(labels, prediction)
    if text is not None and labels.suggestion_key is not None and text_is_current(labels, task, text):
        return shown_as_text(labels, prediction)
    return suggestion_of(prediction, labels, "prefilled")


def text_is_current(labels: ProjectLabels, task, text: str | None) -> bool:
    """Whether the task's data already shows `text` (None: shows none), or the config shows no text."""
    key = labels.suggestion_key
    data = task.get("data") if isinstance(task, dict) else None
    if key is None or not isinstance(data, dict):
        return True
    return data.get(key) == text


def data_with_text(labels: ProjectLabels, data: dict, text: str | None) -> dict:
    """The task's data showing `text` (None: without the suggestion's key); the rest as it is."""
    rest = {k: v for k, v in data.items() if k != labels.suggestion_key}
    return rest if text is None else {**rest, labels.suggestion_key: text}
