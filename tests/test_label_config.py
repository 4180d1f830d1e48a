import json
from pathlib import Path

import numpy as np
import pytest

from backend.labelstudio.label_config import (
    LabelConfigError,
    ProjectLabels,
    parse_label_config,
    prediction_result,
    task_image_url,
)

ROOT = Path(__file__).resolve().parents[1]
from ls_examples import EXAMPLES
AESTHETIC = ("high", "low")
EMOTION = ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness")


def config(body: str, image: str = '<Image name="image" value="$image"/>') -> str:
    return f"<View>{image}{body}</View>"


def choices(name: str, values=("a", "b"), to="image", extra="") -> str:
    inner = "".join(f'<Choice value="{v}"/>' for v in values)
    return f'<Choices name="{name}" toName="{to}" {extra}>{inner}</Choices>'


DEFAULT_BODY = choices("aesthetic", AESTHETIC) + choices("emotion", EMOTION)


def error(xml: str, *names: str) -> str:
    with pytest.raises(LabelConfigError) as info:
        parse_label_config(xml, *names)
    return str(info.value)


# --- valid configs ---------------------------------------------------------------------------


def test_shipped_config_gives_default_classes():
    labels = parse_label_config((ROOT / "label_config" / "aesthetic_emotion.xml").read_text())
    assert labels == ProjectLabels("image", "image", "aesthetic", "emotion", AESTHETIC, EMOTION, "aesemo_suggestion")
    assert labels.classes() == {"aesthetic": list(AESTHETIC), "emotion": list(EMOTION)}


def test_schema_sent_by_label_studio_setup():
    body = json.loads((EXAMPLES / "setup.json").read_text())["request"]["body"]
    labels = parse_label_config(body["schema"])
    assert (labels.image_name, labels.image_key) == ("image", "image")
    assert labels.aesthetic_classes == AESTHETIC and labels.emotion_classes == EMOTION
    # /predict sends the same config as label_config
    predict = json.loads((EXAMPLES / "predict.json").read_text())["request"]["body"]
    assert parse_label_config(predict["label_config"]) == labels


def test_custom_names_class_counts_and_data_key():
    xml = config(
        choices("beauty", ("good", "neutral", "bad"), to="img") + choices("feeling", ("joy", "calm", "fear", "anger"), to="img"),
        image='<Image name="img" value="$photo_url"/>',
    )
    labels = parse_label_config(xml, "beauty", "feeling")
    assert labels == ProjectLabels(
        "img", "photo_url", "beauty", "feeling", ("good", "neutral", "bad"), ("joy", "calm", "fear", "anger")
    )
    assert labels.classes() == {"aesthetic": ["good", "neutral", "bad"], "emotion": ["joy", "calm", "fear", "anger"]}


def test_nested_views_and_other_tags():
    xml = (
        '<View><Header value="x"/><View style="display:flex"><View><Image name="image" value="$image"/></View>'
        f"<View><Header value='Aesthetic'/>{choices('aesthetic', AESTHETIC)}</View></View>"
        f'<View><View>{choices("emotion", EMOTION)}</View></View>'
        '<TextArea name="comment" toName="image"/></View>'
    )
    labels = parse_label_config(xml)
    assert labels.aesthetic_classes == AESTHETIC and labels.emotion_classes == EMOTION


def test_alias_is_the_stored_value():
    xml = config(
        '<Choices name="aesthetic" toName="image"><Choice value="High quality" alias="high"/>'
        '<Choice value="low"/></Choices>' + choices("emotion", EMOTION)
    )
    assert parse_label_config(xml).aesthetic_classes == AESTHETIC


def test_parse_is_cached():
    xml = config(DEFAULT_BODY)
    assert parse_label_config(xml) is parse_label_config(xml, "aesthetic", emotion_control="emotion")


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("xml", ["", "<View>", "not xml", "<View><Image name='image' value='$image'></View>"])
def test_invalid_xml(xml):
    assert "not valid XML" in error(xml)


def test_not_a_string():
    with pytest.raises(LabelConfigError, match="must be an XML string, got NoneType"):
        parse_label_config(None)


def test_missing_control_lists_existing_choices():
    msg = error(config(DEFAULT_BODY), "beauty", "emotion")
    assert "no Choices control named 'beauty'" in msg
    assert "'aesthetic', 'emotion'" in msg and "AESEMO_AESTHETIC_CONTROL" in msg
    msg = error(config(choices("aesthetic", AESTHETIC)))
    assert "no Choices control named 'emotion'" in msg and "AESEMO_EMOTION_CONTROL" in msg


def test_no_choices_at_all():
    assert "(Choices controls: none)" in error(config(""))


def test_control_that_is_not_choices():
    xml = config(choices("aesthetic", AESTHETIC) + '<Labels name="emotion" toName="image"><Label value="x"/></Labels>')
    assert "'emotion' is a <Labels> control, not a <Choices>" in error(xml)
    xml = config(choices("aesthetic", AESTHETIC), image='<Image name="emotion" value="$image"/>')
    xml = xml.replace('toName="image"', 'toName="emotion"')
    assert "'emotion' is a <Image> object, not a <Choices>" in error(xml)


def test_to_name_not_an_image():
    xml = config(choices("aesthetic", AESTHETIC) + choices("emotion", EMOTION, to="txt") + '<Text name="txt" value="$t"/>')
    assert "Choices 'emotion' has toName='txt', which is a <Text>, not an <Image>" in error(xml)
    xml = config(choices("aesthetic", AESTHETIC, to="missing") + choices("emotion", EMOTION))
    assert "toName='missing', which is not defined in the config" in error(xml)
    xml = config(choices("aesthetic", AESTHETIC, to="image,image2") + choices("emotion", EMOTION))
    assert "'aesthetic' must have one toName" in error(xml)


@pytest.mark.parametrize(
    "image, shown",
    [('<Image name="image" valueList="$images"/>', "valueList='$images'"),
     ('<Image name="image" value="https://x/a.jpg"/>', "value='https://x/a.jpg'")],
)
def test_image_value_must_be_one_data_key(image, shown):
    assert shown in error(config(DEFAULT_BODY, image=image))


def test_controls_on_different_images():
    xml = config(
        choices("aesthetic", AESTHETIC) + choices("emotion", EMOTION, to="image2") + '<Image name="image2" value="$b"/>'
    )
    msg = error(xml)
    assert "'aesthetic' points at Image 'image'" in msg and "'emotion' points at Image 'image2'" in msg


@pytest.mark.parametrize("values", [(), ("only",)])
def test_fewer_than_two_choices(values):
    msg = error(config(choices("aesthetic", values) + choices("emotion", EMOTION)))
    assert f"Choices 'aesthetic' has {len(values)} choice(s)" in msg and "at least 2" in msg


def test_duplicate_choice_values():
    msg = error(config(choices("aesthetic", AESTHETIC) + choices("emotion", ("awe", "fear", "awe", "fear", "joy"))))
    assert "Choices 'emotion' has duplicate choice values: 'awe', 'fear'" in msg


def test_multiple_choice_refused():
    msg = error(config(choices("aesthetic", AESTHETIC, extra='choice="multiple"') + choices("emotion", EMOTION)))
    assert "Choices 'aesthetic' has choice=\"multiple\"" in msg and "one class per task" in msg


def test_same_control_for_both_heads():
    assert "both are 'aesthetic'" in error(config(DEFAULT_BODY), "aesthetic", "aesthetic")


def test_error_is_a_value_error():
    assert issubclass(LabelConfigError, ValueError)


# --- predictions and class indices ------------------------------------------------------------

LABELS = ProjectLabels("img", "photo", "beauty", "feeling", ("good", "neutral", "bad"), ("joy", "calm", "fear", "anger"))


def test_prediction_result_format():
    pred = prediction_result(LABELS, [0.1, 0.7, 0.2], [0.55, 0.05, 0.3, 0.1], "v3")
    assert pred == {
        "model_version": "v3",
        "score": 0.55,
        "result": [
            {"from_name": "beauty", "to_name": "img", "type": "choices", "value": {"choices": ["neutral"]}, "score": 0.7},
            {"from_name": "feeling", "to_name": "img", "type": "choices", "value": {"choices": ["joy"]}, "score": 0.55},
        ],
    }
    json.dumps(pred)


def test_prediction_score_is_min_and_plain_float():
    pred = prediction_result(LABELS, np.array([0.1, 0.1, 0.8], np.float32), np.array([0.1, 0.2, 0.6, 0.1]), "v0")
    assert pred["score"] == pytest.approx(0.6)
    assert pred["result"][0]["value"]["choices"] == ["bad"] and pred["result"][1]["value"]["choices"] == ["fear"]
    scores = [pred["score"]] + [r["score"] for r in pred["result"]]
    assert all(type(s) is float for s in scores)
    json.dumps(pred)


def test_prediction_of_default_config_matches_recorded_reply():
    labels = ProjectLabels("image", "image", "aesthetic", "emotion", AESTHETIC, EMOTION)
    pred = prediction_result(labels, [0.19, 0.81], [0.1, 0.42, 0.1, 0.1, 0.08, 0.08, 0.06, 0.06], "v0")
    assert pred["score"] == 0.42
    assert [(r["from_name"], r["value"]["choices"]) for r in pred["result"]] == [("aesthetic", ["low"]), ("emotion", ["awe"])]


@pytest.mark.parametrize("a, e", [([0.5, 0.3, 0.2, 0.0], [0.25] * 4), ([0.2, 0.3, 0.5], [0.5, 0.5])])
def test_prediction_length_mismatch(a, e):
    with pytest.raises(ValueError, match="probabilities for"):
        prediction_result(LABELS, a, e, "v0")


def test_prediction_rejects_nan():
    with pytest.raises(ValueError, match="non-finite"):
        prediction_result(LABELS, [float("nan"), 0.5, 0.5], [0.25] * 4, "v0")


def test_config_the_sdk_cannot_read():
    xml = "<?xml version='1.0' encoding='utf-8'?>" + config(DEFAULT_BODY)
    assert "label-studio-sdk cannot read the label config" in error(xml)


@pytest.mark.parametrize("task, url", [
    ({"id": 1, "data": {"image": "http://ls/img/1.png"}}, "http://ls/img/1.png"),
    ({"id": 1, "data": {"image": {"url": "x"}}}, None),      # not a URL string
    ({"id": 1, "data": {"photo": "http://ls/img/1.png"}}, None),   # another field
    ({"id": 1, "data": "http://ls/img/1.png"}, None),        # data that is not an object
    ({"id": 1, "data": ["a"]}, None),
    ({"id": 1}, None),
    ("a task", None),
    (None, None),
])
def test_a_tasks_image_url_is_read_only_where_label_studio_puts_it(task, url):
    labels = parse_label_config(config(DEFAULT_BODY))
    assert labels.image_key == "image"
    assert labels.image_url(task) == url
    assert task_image_url(task, None) is None    # label config not known yet
