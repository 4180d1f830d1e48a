"""The endpoints Label Studio calls (its ML backend protocol), answered by
backend/services/ml_backend.py."""
from __future__ import annotations

from flask import Blueprint, jsonify

from backend.http.current import services
from backend.http.policy import json_body
from backend.services.ml_backend import LabelStudioBackend

labelstudio = Blueprint("labelstudio", __name__)


def ml_backend() -> LabelStudioBackend:
    return services().labelstudio


@labelstudio.get("/health")
def health():
    return jsonify(ml_backend().health())


@labelstudio.get("/versions")
def versions():
    # Label Studio lists the model versions with it (its ML backend API's `versions`)
    return jsonify(ml_backend().versions())


@labelstudio.post("/setup")
def setup():
    return jsonify(ml_backend().setup(json_body()))


@labelstudio.post("/predict")
def predict():
    return jsonify(ml_backend().predict(json_body()))


@labelstudio.post("/webhook")
def webhook():
    return jsonify(ml_backend().webhook(json_body()))


@labelstudio.post("/train")
def legacy_train():
    answer = ml_backend().train(json_body())
    return jsonify(answer), 202 if answer.get("job") else 200  # a refusal is no error to Label Studio
