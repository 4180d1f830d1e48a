"""The endpoints Label Studio calls (its ML backend protocol). POST /webhook usually takes the
fast path around Flask (FastWebhook in backend/http/app.py); the route here answers the rest."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from backend.http.policy import json_body
from backend.service import Backend

labelstudio = Blueprint("labelstudio", __name__)


def backend() -> Backend:
    return current_app.extensions["aesemo"]


@labelstudio.get("/health")
def health():
    return jsonify(backend().health())


@labelstudio.get("/versions")
def versions():
    # Label Studio lists the model versions with it (its ML backend API's `versions`)
    return jsonify(backend().versions())


@labelstudio.post("/setup")
def setup():
    return jsonify(backend().setup(json_body()))


@labelstudio.post("/predict")
def predict():
    return jsonify(backend().predict(json_body()))


@labelstudio.post("/webhook")
def webhook():
    return jsonify(backend().webhook(json_body()))


@labelstudio.post("/train")
def legacy_train():
    answer = backend().legacy_train(json_body())
    return jsonify(answer), 202 if answer.get("job") else 200  # a refusal is no error to Label Studio
