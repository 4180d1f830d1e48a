"""Read a project's labelling config: which Image to classify and which two Choices are the heads.

Label Studio does not validate predictions against the config (Label Studio protocol notes §5.3,
docs/developers/label-studio-protocol.md), so a mismatch would be stored silently; we refuse a
config we cannot serve with a message naming the problem.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from collections.abc import Sequence

from label_studio_sdk.label_interface import LabelInterface
from label_studio_sdk.label_interface.control_tags import ChoicesTag
from label_studio_sdk.label_interface.object_tags import ImageTag


# The task data key the model's suggestion text is written under (backend/serving/suggestion_text.py),
# for a config that shows it: a tag with value="$aesemo_suggestion", a <Header> in the shipped one.
SUGGESTION_FIELD = "aesemo_suggestion"


class LabelConfigError(ValueError):
    """The label config cannot be used by this backend; the message says why."""


@dataclass(frozen=True)
class ProjectLabels:
    image_name: str  # the Image object's name: to_name of every result
    image_key: str  # task["data"] key holding the image URL ("image" for value="$image")
    aesthetic_control: str
    emotion_control: str
    aesthetic_classes: tuple[str, ...]  # config order = class index
    emotion_classes: tuple[str, ...]
    suggestion_key: str | None = None  # the task data key the config shows the suggestion text from; None: none

    def classes(self) -> dict[str, list[str]]:
        return {"aesthetic": list(self.aesthetic_classes), "emotion": list(self.emotion_classes)}

    def image_url(self, task) -> str | None:
        return task_image_url(task, self.image_key)


def task_image_url(task, image_key: str | None) -> str | None:
    """The image URL a Label Studio task shows under `image_key`; None when the key is unknown or
    the task, its data or the URL is not what Label Studio sends (webhook bodies are hostile)."""
    data = task.get("data") if isinstance(task, dict) and image_key else None
    url = data.get(image_key) if isinstance(data, dict) else None
    return url if isinstance(url, str) else None


def parse_label_config(
    xml: str, aesthetic_control: str = "aesthetic", emotion_control: str = "emotion"
) -> ProjectLabels:
    """Parse and check a config; /predict sends it on every call, so results are cached."""
    if not isinstance(xml, str):
        raise LabelConfigError(f"label config must be an XML string, got {type(xml).__name__}")
    # Positional call so that keyword and positional callers share one cache entry.
    return _parse_cached(xml, aesthetic_control, emotion_control)


@lru_cache(maxsize=64)
def _parse_cached(xml: str, aesthetic_control: str, emotion_control: str) -> ProjectLabels:
    if aesthetic_control == emotion_control:
        raise LabelConfigError(
            f"the aesthetic and emotion heads need two different Choices controls, both are {aesthetic_control!r}"
        )
    try:
        # The SDK merges duplicate <Choice> values, so we also keep the raw tree to count them.
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise LabelConfigError(f"label config is not valid XML: {e}") from None
    try:
        interface = LabelInterface(xml)
    except Exception as e:  # SDK/lxml errors have no common base; e.g. lxml refuses an <?xml encoding?> header
        raise LabelConfigError(f"label-studio-sdk cannot read the label config: {e}") from None

    controls = {c.name: c for c in (interface.controls or ())}
    objects = {o.name: o for o in (interface.objects or ())}
    a_classes, a_image = _choices(root, controls, objects, aesthetic_control, "AESEMO_AESTHETIC_CONTROL")
    e_classes, e_image = _choices(root, controls, objects, emotion_control, "AESEMO_EMOTION_CONTROL")
    if a_image.name != e_image.name:
        raise LabelConfigError(
            f"Choices {aesthetic_control!r} points at Image {a_image.name!r} but {emotion_control!r} "
            f"points at Image {e_image.name!r}; both must label the same image"
        )
    return ProjectLabels(
        image_name=a_image.name,
        image_key=a_image.value_name,
        aesthetic_control=aesthetic_control,
        emotion_control=emotion_control,
        aesthetic_classes=a_classes,
        emotion_classes=e_classes,
        suggestion_key=SUGGESTION_FIELD if _shows_field(root, SUGGESTION_FIELD) else None,
    )


def _shows_field(root: ET.Element, key: str) -> bool:
    """Whether some tag of the config shows the task data value `key` (value="$key")."""
    return any(element.get("value") == f"${key}" for element in root.iter())


def _choices(root: ET.Element, controls: dict, objects: dict, name: str, setting: str):
    """Check one head's control; return its class values and the Image it labels."""
    control = controls.get(name)
    if not isinstance(control, ChoicesTag):
        if control is not None:
            what = f"a <{control.tag}> control"
        elif name in objects:
            what = f"a <{objects[name].tag}> object"
        else:
            existing = ", ".join(repr(n) for n, c in controls.items() if isinstance(c, ChoicesTag)) or "none"
            raise LabelConfigError(
                f"no Choices control named {name!r} in the label config (Choices controls: {existing}); "
                f"rename it in the config or set {setting}"
            )
        raise LabelConfigError(f"{name!r} is {what}, not a <Choices>")

    if len(control.to_name) != 1:
        raise LabelConfigError(
            f"Choices {name!r} must have one toName (an Image), has toName={','.join(control.to_name)!r}"
        )
    target = objects.get(control.to_name[0])
    if not isinstance(target, ImageTag):
        what = f"a <{target.tag}>" if target is not None else "not defined in the config"
        raise LabelConfigError(f"Choices {name!r} has toName={control.to_name[0]!r}, which is {what}, not an <Image>")
    if target.is_image_list or not target.value_is_variable:
        raise LabelConfigError(
            f"Image {target.name!r} must have value=\"$key\" naming the task data key of one image URL, "
            f"has {'valueList' if target.is_image_list else 'value'}={target.value!r}"
        )

    if control.is_multiple_choice:
        raise LabelConfigError(
            f"Choices {name!r} has choice=\"multiple\"; the model predicts one class per task, "
            f"use choice=\"single\""
        )
    element = next(el for el in root.iter() if el.get("name") == name and el.get("toName"))
    # Label Studio stores a Choice's alias, when set, instead of its value.
    values = [v for c in element.iter("Choice") if (v := c.get("alias") or c.get("value")) is not None]
    duplicates = sorted(v for v, n in Counter(values).items() if n > 1)
    if duplicates:
        raise LabelConfigError(f"Choices {name!r} has duplicate choice values: {', '.join(map(repr, duplicates))}")
    if len(values) < 2:
        raise LabelConfigError(f"Choices {name!r} has {len(values)} choice(s); a classifier needs at least 2")
    return tuple(values), target


def prediction_result(
    labels: ProjectLabels,
    aesthetic_probs: Sequence[float],
    emotion_probs: Sequence[float],
    model_version: str,
    score: float | None = None,
) -> dict:
    """One Label Studio prediction (Label Studio protocol notes §5.3): the top class of each head. `score` is
    the task's certainty (model/uncertainty.py); None: the lower top probability."""
    result = []
    for control, classes, probs in (
        (labels.aesthetic_control, labels.aesthetic_classes, aesthetic_probs),
        (labels.emotion_control, labels.emotion_classes, emotion_probs),
    ):
        # float(): numpy/torch scalars are not JSON numbers, and a non-numeric score makes
        # the user's GET /api/tasks/{id} fail with 400 (Label Studio protocol notes §0.8).
        probs = [float(p) for p in probs]
        if len(probs) != len(classes):
            raise ValueError(f"{control!r}: {len(probs)} probabilities for {len(classes)} classes {list(classes)}")
        if not all(math.isfinite(p) for p in probs):
            raise ValueError(f"{control!r}: non-finite probabilities {probs}")
        best = max(range(len(probs)), key=probs.__getitem__)
        result.append({
            "from_name": control,
            "to_name": labels.image_name,
            "type": "choices",
            "value": {"choices": [classes[best]]},
            "score": probs[best],
        })
    task_score = min(r["score"] for r in result) if score is None else float(score)
    return {"model_version": model_version, "score": task_score, "result": result}
