"""The running app's services (backend/services/process.py), for the blueprints."""
from __future__ import annotations

from flask import current_app

from backend.services.process import Services


def services() -> Services:
    return current_app.extensions["aesemo"]
