"""The admin's consensus endpoints (backend/services/consensus.py): the summary, tasks by state,
the policy, resync from Label Studio's export and snapshots."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from backend.http.current import services
from backend.http.policy import json_body
from backend.services.consensus import ConsensusService

consensus = Blueprint("consensus", __name__)
PROJECT = "/projects/<project:project>"


def consensus_service() -> ConsensusService:
    return services().consensus


@consensus.get(f"{PROJECT}/consensus")
def summary(project):
    return jsonify(consensus_service().summary(project))


@consensus.get(f"{PROJECT}/consensus/tasks")
def tasks(project):
    return jsonify(consensus_service().tasks(project, request.args.get("state", "disputed")))


@consensus.put(f"{PROJECT}/consensus/policy")
def policy(project):
    return jsonify(consensus_service().set_policy(project, json_body()))


@consensus.post(f"{PROJECT}/resync")
def resync(project):
    return jsonify(consensus_service().resync(project))


@consensus.post(f"{PROJECT}/snapshot")
def snapshot(project):
    return jsonify(consensus_service().snapshot(project))
