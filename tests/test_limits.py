"""One table of training ranges (model/limits.py), enforced alike by TrainConfig, the settings
and the command line: NaN, infinity, 1e400 and integers of hundreds of digits are refused with
the field and its range named."""
from __future__ import annotations

import math

import pytest

from backend.cli import main as cli_main
from backend.core.settings import Settings, is_numeric, load_settings, markdown_table, setting_fields, setting_limit
from model.limits import TRAINING_LIMITS, LimitError, check_training_value
from model.train import TrainConfig

from training_project import environment

HUGE = 10 ** 400


@pytest.mark.parametrize("name, value", [
    ("lr", math.inf), ("lr", -math.inf), ("lr", math.nan), ("lr", 1e308), ("lr", float("1e400")), ("lr", 0.0),
    ("lr", HUGE), ("lr", "0.1"), ("lr", True),
    ("epochs", HUGE), ("epochs", 1001), ("epochs", 0), ("epochs", 2.0), ("epochs", math.inf),
    ("batch_size", 1025), ("batch_size", 0), ("momentum", 1.0), ("val_fraction", 1.0), ("seed", -1),
    ("seed", 2 ** 32), ("patience", -1), ("lam", math.nan), ("train_size", 8), ("crop_size", 5000),
])
def test_out_of_range_values_are_refused_naming_field_and_range(name, value):
    with pytest.raises(LimitError) as info:
        check_training_value(name, value)
    message = str(info.value)
    assert message.startswith(f"{name} must be ") and TRAINING_LIMITS[name].describe() in message
    assert len(message) < 200  # a 400-digit integer is cut short


@pytest.mark.parametrize("name, value, expected", [
    ("lr", 1, 1.0), ("lr", 1e-12, 1e-12), ("epochs", 1000, 1000), ("batch_size", 1, 1), ("momentum", 0.0, 0.0),
    ("patience", 0, 0), ("seed", 2 ** 32 - 1, 2 ** 32 - 1),
])
def test_values_in_range_pass(name, value, expected):
    assert check_training_value(name, value) == expected


def test_range_descriptions():
    assert TRAINING_LIMITS["lr"].describe() == "a finite number in (0, 1]"
    assert TRAINING_LIMITS["epochs"].describe() == "an integer in 1..1000"
    assert TRAINING_LIMITS["batch_size"].describe() == "an integer in 1..1024"


@pytest.mark.parametrize("fields, word", [
    ({"lr": math.inf}, "lr must be a finite number in (0, 1]"),
    ({"lr": math.nan}, "lr must be"),
    ({"epochs": HUGE}, "epochs must be an integer in 1..1000"),
    ({"batch_size": 4096}, "batch_size must be an integer in 1..1024"),
    ({"train_size": 32, "crop_size": 40}, "must not exceed"),
])
def test_train_config_refuses_what_the_table_refuses(fields, word):
    with pytest.raises(ValueError) as info:
        TrainConfig(**fields)
    assert word in str(info.value)


@pytest.mark.parametrize("variable, raw, words", [
    ("AESEMO_TRAIN_LR", "inf", ["AESEMO_TRAIN_LR", "finite"]),
    ("AESEMO_TRAIN_LR", "nan", ["AESEMO_TRAIN_LR", "finite"]),
    ("AESEMO_TRAIN_LR", "1e400", ["AESEMO_TRAIN_LR", "finite"]),
    ("AESEMO_TRAIN_LR", "2", ["AESEMO_TRAIN_LR", "(0, 1]"]),
    ("AESEMO_TRAIN_EPOCHS", "1" + "0" * 400, ["AESEMO_TRAIN_EPOCHS", "1..1000"]),
    ("AESEMO_TRAIN_EPOCHS", "0", ["AESEMO_TRAIN_EPOCHS", "1..1000"]),
    ("AESEMO_TRAIN_BATCH_SIZE", "100000", ["AESEMO_TRAIN_BATCH_SIZE", "1..1024"]),
    ("AESEMO_TRAIN_PATIENCE", "-1", ["AESEMO_TRAIN_PATIENCE", "0..1000"]),
    ("AESEMO_TRAIN_CROP_SIZE", "300", ["AESEMO_TRAIN_CROP_SIZE", "AESEMO_TRAIN_IMAGE_SIZE"]),
    ("AESEMO_PROMOTION_MARGIN", "nan", ["AESEMO_PROMOTION_MARGIN", "finite"]),
    ("AESEMO_PROMOTION_MARGIN", "5", ["AESEMO_PROMOTION_MARGIN", "[0, 1]"]),
    ("AESEMO_PROMOTION", "sometimes", ["AESEMO_PROMOTION", "metric, always"]),
    ("AESEMO_CONSENSUS_MIN_ANNOTATORS", "1" + "0" * 30, ["AESEMO_CONSENSUS_MIN_ANNOTATORS", "1..100"]),
    ("AESEMO_CONSENSUS_MIN_AGREEMENT", "inf", ["AESEMO_CONSENSUS_MIN_AGREEMENT", "finite"]),
    ("AESEMO_MAX_FAILED_IMAGES", "2", ["AESEMO_MAX_FAILED_IMAGES", "[0, 1]"]),
    # each of these once started without a word: a 500 on every /predict, a core spent polling...
    ("AESEMO_PREDICT_CHUNK", "0", ["AESEMO_PREDICT_CHUNK", "1..1024"]),
    ("AESEMO_SWAP_POLL", "0", ["AESEMO_SWAP_POLL", "[0.1, 3600]"]),
    ("AESEMO_IMAGE_TIMEOUT", "0", ["AESEMO_IMAGE_TIMEOUT", "(0, 3600]"]),
    ("AESEMO_IMAGE_TIMEOUT", "-1", ["AESEMO_IMAGE_TIMEOUT", "(0, 3600]"]),
    ("AESEMO_MAX_TASKS", "-1", ["AESEMO_MAX_TASKS", "1..1000000"]),
    ("AESEMO_MAX_IMAGE_BYTES", "-1", ["AESEMO_MAX_IMAGE_BYTES", "1..1073741824"]),
    ("AESEMO_MAX_IMAGE_PIXELS", "0", ["AESEMO_MAX_IMAGE_PIXELS", "1..1000000000"]),
    ("AESEMO_JOB_HEARTBEAT", "0", ["AESEMO_JOB_HEARTBEAT", "[0.5, 3600]"]),
    ("AESEMO_JOB_TIMEOUT", "-1", ["AESEMO_JOB_TIMEOUT", "60..2592000"]),
    ("AESEMO_MIN_TRAINING_LABELS", "-3", ["AESEMO_MIN_TRAINING_LABELS", "1..1000000"]),
    ("AESEMO_AUTO_TRAIN_THRESHOLD", "-1", ["AESEMO_AUTO_TRAIN_THRESHOLD", "0..1000000"]),
])
def test_settings_out_of_range_are_refused_at_startup(variable, raw, words):
    with environment({variable: raw}), pytest.raises(ValueError) as info:
        load_settings()
    for word in words:
        assert word in str(info.value), str(info.value)


NUMERIC_SETTINGS = [f for f in setting_fields() if is_numeric(f)]


def just_outside(limit) -> list[str]:
    """The texts of the values just below and just above the range."""
    if limit.kind is int:
        return [str(limit.low - 1), str(limit.high + 1)]
    below = limit.low if limit.low_open else math.nextafter(limit.low, -math.inf)
    above = limit.high if limit.high_open else math.nextafter(limit.high, math.inf)
    return [repr(float(below)), repr(float(above))]


def test_every_numeric_setting_declares_a_range_shown_in_the_settings_table():
    assert {f.name for f in NUMERIC_SETTINGS} == {f.name for f in setting_fields() if f.type in ("int", "float")}
    table = {line.split(" | ")[0].strip("| `"): line for line in markdown_table().splitlines()}
    for f in NUMERIC_SETTINGS:
        limit = setting_limit(f)
        assert limit is not None, f"{f.metadata['env']} has no range"
        assert f" | {limit.span()} | " in table[f.metadata["env"]], table[f.metadata["env"]]


@pytest.mark.parametrize("field", NUMERIC_SETTINGS, ids=[f.metadata["env"] for f in NUMERIC_SETTINGS])
def test_every_numeric_setting_refuses_values_just_outside_its_range(field):
    variable, limit = field.metadata["env"], setting_limit(field)
    for raw in just_outside(limit):
        with environment({variable: raw}), pytest.raises(ValueError) as info:
            load_settings()
        assert variable in str(info.value) and limit.span() in str(info.value), (raw, str(info.value))


def test_default_settings_pass():
    with environment({}):
        assert load_settings() == Settings()


def test_a_bad_setting_stops_the_command_line_with_one_line(capsys, tmp_path):
    with environment({"AESEMO_TRAIN_LR": "nan", "AESEMO_DATA_DIR": str(tmp_path)}):
        assert cli_main(["jobs", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "AESEMO_TRAIN_LR" in err, err


@pytest.mark.parametrize("args, words", [
    (["train", "m.jsonl", "--out", "v", "--lr", "inf"], ["--lr", "(0, 1]"]),
    (["train", "m.jsonl", "--out", "v", "--lr", "nan"], ["--lr", "(0, 1]"]),
    (["train", "m.jsonl", "--out", "v", "--lr", "1e400"], ["--lr", "(0, 1]"]),
    (["train", "m.jsonl", "--out", "v", "--epochs", "1" + "0" * 400], ["--epochs", "1..1000"]),
    (["train", "m.jsonl", "--out", "v", "--batch-size", "0"], ["--batch-size", "1..1024"]),
    (["train", "m.jsonl", "--out", "v", "--lam", "inf"], ["--lam", "[0, 100]"]),
    (["train", "m.jsonl", "--out", "v", "--val-fraction", "1"], ["--val-fraction", "[0, 1)"]),
    (["train", "m.jsonl", "--out", "v", "--seed", "-1"], ["--seed"]),
    (["train-project", "1", "--lr", "Infinity"], ["--lr", "(0, 1]"]),
    (["train-project", "1", "--epochs", "1e3"], ["--epochs", "1..1000"]),
])
def test_command_line_flags_are_checked_against_the_table(capsys, args, words):
    with pytest.raises(SystemExit) as info:
        cli_main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    for word in words:
        assert word in err, err
