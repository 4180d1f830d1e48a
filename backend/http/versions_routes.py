"""The admin's version endpoints (backend/services/versions.py): listings, promotion, pins, rollback,
and the prediction refresh jobs."""
from __future__ import annotations

from flask import Blueprint, jsonify

from backend.http.current import services
from backend.http.policy import json_body_or_empty
from backend.services.versions import VersionService

versions = Blueprint("versions", __name__)
PROJECT = "/projects/<project:project>"


def version_service() -> VersionService:
    return services().versions


@versions.get(f"{PROJECT}/versions")
def project_versions(project):
    return jsonify(version_service().project_versions(project))


@versions.post(f"{PROJECT}/versions/<version>/promote")
def promote(project, version):
    return jsonify(version_service().promote(project, version))


@versions.post(f"{PROJECT}/versions/<version>/pin")
def pin(project, version):
    return jsonify(version_service().pin(project, version, True))


@versions.post(f"{PROJECT}/versions/<version>/unpin")
def unpin(project, version):
    return jsonify(version_service().pin(project, version, False))


@versions.post(f"{PROJECT}/rollback")
def roll_back(project):
    return jsonify(version_service().roll_back(project, json_body_or_empty()))


@versions.get(f"{PROJECT}/refresh")
def refresh_jobs(project):
    return jsonify(version_service().refresh_jobs(project))


@versions.post(f"{PROJECT}/refresh")
def refresh(project):
    return jsonify(version_service().refresh(project))


@versions.post(f"{PROJECT}/refresh/<job_id>/cancel")
def cancel_refresh(project, job_id):
    return jsonify(version_service().cancel_refresh(project, job_id))
