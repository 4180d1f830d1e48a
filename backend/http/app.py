"""The Flask app factory: the request policy's hooks and error handlers, a blueprint per service
(Label Studio's endpoints, the admin page, versions, consensus, jobs), and the headers every
answer carries."""
from __future__ import annotations

import json
import time

import redis
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter, Map, RequestRedirect

from backend.core.errors import DomainError
from backend.core.redis_connection import connect
from backend.core.settings import Settings, load_settings
from backend.http.admin_routes import admin
from backend.http.consensus_routes import consensus
from backend.http.jobs_routes import jobs
from backend.http.labelstudio_routes import labelstudio
from backend.http.versions_routes import versions
from backend.http.policy import MAX_BODY_BYTES, RequestPolicy
from backend.core.metrics import observe_request
from backend.labelstudio.projects import project_id
from backend.services.process import Services

__all__ = ["MAX_BODY_BYTES", "create_app"]

# the admin page and the admin's JSON API: only under this backend's own host names
ADMIN_BLUEPRINTS = (admin.name, versions.name, consensus.name, jobs.name)


class _ExactPaths(Map):
    """werkzeug's URL map, without its merge_slashes: a path with `//` in it (or `%2F` next to a
    slash) is answered as it is, a 404 JSON where no route has it, instead of a 308 with an
    HTML body to the path with the slashes merged."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, merge_slashes=False, **kwargs)


class _App(Flask):
    url_map_class = _ExactPaths  # for the static route too, which Flask adds as it starts

    def handle_http_exception(self, e: HTTPException):
        # the one redirect left, from a sub-path's bare prefix (/aesemo) to its page (/aesemo/):
        # Flask hands routing redirects past the error handlers, with werkzeug's HTML body
        if isinstance(e, RequestRedirect):
            return json_error(e, f"moved to {e.new_url}")
        return super().handle_http_exception(e)


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    settings = settings or load_settings()
    services = services or Services(settings, connect(settings))
    policy = RequestPolicy(settings)
    app = _App(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["aesemo"] = services
    app.url_map.converters["project"] = ProjectConverter
    _apply_policy(app, policy)
    for blueprint in (labelstudio, admin, versions, consensus, jobs):
        app.register_blueprint(blueprint)
    app.wsgi_app = SecurityHeaders(app.wsgi_app)
    services.swap.start()  # here, not on first use: a request never starts threads
    return app


def _apply_policy(app: Flask, policy: RequestPolicy) -> None:
    @app.before_request
    def start():
        g.started = time.perf_counter()
        refusal = policy.refusal(request.environ)
        if not refusal and request.blueprint in ADMIN_BLUEPRINTS:
            refusal = policy.admin_refusal(request.environ)
        if refusal:
            return Response(json.dumps(refusal.body), status=refusal.status, mimetype="application/json",
                            headers=refusal.headers)

    @app.before_request
    def check_project():
        # here rather than in the converter, so that a refused id is a 400 naming it (not a
        # 404), and after the credentials check above
        if request.view_args and "project" in request.view_args:
            request.view_args["project"] = project_id(request.view_args["project"])

    @app.after_request
    def measure(response):
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        observe_request(endpoint, request.method, response.status_code, g.get("started", time.perf_counter()))
        return response

    @app.errorhandler(DomainError)
    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    @app.errorhandler(Exception)
    def failure(exc: Exception):
        status, body = policy.failure(exc, request.method, request.path)
        return jsonify(body), status

    @app.errorhandler(413)
    def too_large(exc):
        return json_error(exc, f"body over {MAX_BODY_BYTES} bytes")

    @app.errorhandler(404)
    def not_found(exc):
        return json_error(exc, f"no endpoint {request.method} {request.path}")

    @app.errorhandler(405)
    def wrong_method(exc):
        return json_error(exc, f"{request.method} is not allowed on {request.path}")

    @app.errorhandler(HTTPException)
    def other_http_error(exc: HTTPException):  # 400, 415, 416, 431...: Flask's own, as JSON
        return json_error(exc, exc.description or exc.name)


class ProjectConverter(BaseConverter):
    """A project id in a URL, as text: `check_project` bounds it (int() refuses over 4,300
    digits, and werkzeug's int converter would answer that with a 404)."""
    regex = r"[0-9]+"


class SecurityHeaders:
    """WSGI middleware: headers on every answer of Flask's (and on waitress's error answers, in
    backend/http/worker.py). `nosniff`: a browser never runs a
    JSON answer or a report file as a script or a page; DENY: no page elsewhere frames the admin
    page (or any answer) to trick clicks out of the admin. The admin page adds its own
    Content-Security-Policy (backend/http/admin_routes.py)."""

    HEADERS = (("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"))

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        def start(status, headers, exc_info=None):
            return start_response(status, [*headers, *self.HEADERS], exc_info)
        return self.wsgi_app(environ, start)


def json_error(exc: HTTPException, message: str) -> Response:
    """werkzeug's answer for `exc` (its status and headers, e.g. 405's Allow) with a JSON body."""
    response = exc.get_response()
    response.set_data(json.dumps({"error": message}) + "\n")
    response.mimetype = "application/json"
    return response
