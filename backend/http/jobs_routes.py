"""The admin's training endpoints (backend/services/training.py): start, list, describe, cancel."""
from __future__ import annotations

from flask import Blueprint, jsonify

from backend.http.current import services
from backend.http.policy import json_body_or_empty
from backend.services.training import TrainingService

jobs = Blueprint("jobs", __name__)
PROJECT = "/projects/<project:project>"


def training_service() -> TrainingService:
    return services().training


@jobs.post(f"{PROJECT}/train")
def train(project):
    return jsonify(training_service().train(project, json_body_or_empty(), "admin")), 202


@jobs.get(f"{PROJECT}/jobs")
def project_jobs(project):
    return jsonify(training_service().jobs(project))


@jobs.get(f"{PROJECT}/jobs/<job_id>")
def job(project, job_id):
    return jsonify(training_service().job(project, job_id))


@jobs.post(f"{PROJECT}/jobs/<job_id>/cancel")
def cancel(project, job_id):
    return jsonify(training_service().cancel(project, job_id))
