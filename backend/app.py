"""The Flask app factory: thin handlers around `service.Backend`."""
from __future__ import annotations

import json
import logging
import time

from flask import Flask, Response, g, jsonify, render_template, request, send_file

from . import admin_page
from .auth import basic_auth_ok, same_origin
from .errors import RequestError
from .metrics import LATENCY, REQUESTS, render
from .redis_store import connect
from .service import Backend
from .settings import Settings, load_settings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> Flask:
    settings = settings or load_settings()
    backend = backend or Backend(settings, connect(settings))
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["aesemo"] = backend

    @app.before_request
    def start():
        g.started = time.perf_counter()
        if settings.basic_auth_user and not basic_auth_ok(request.headers.get("Authorization"),
                                                          settings.basic_auth_user, settings.basic_auth_pass or ""):
            return Response(json.dumps({"error": "wrong or missing Basic credentials"}), status=401,
                            mimetype="application/json", headers={"WWW-Authenticate": 'Basic realm="aesemo"'})
        if request.method not in ("GET", "HEAD", "OPTIONS") and not same_origin(request.headers.get("Origin"),
                                                                                  request.host):
            # a page elsewhere must not use the admin's browser (and its cached Basic
            # credentials) to promote versions or start jobs; servers send no Origin at all
            return jsonify({"error": f"cross-site request from {request.headers['Origin']} refused"}), 403

    @app.after_request
    def measure(response):
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        REQUESTS.labels(endpoint, request.method, str(response.status_code)).inc()
        LATENCY.labels(endpoint).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response

    @app.errorhandler(RequestError)
    def request_error(exc: RequestError):
        body = {"error": str(exc)}
        if exc.details:
            body["errors"] = exc.details
        return jsonify(body), exc.status

    @app.errorhandler(413)
    def too_large(_):
        return jsonify({"error": f"body over {MAX_BODY_BYTES} bytes"}), 413

    @app.errorhandler(404)
    def not_found(_):
        return jsonify({"error": f"no endpoint {request.method} {request.path}"}), 404

    @app.errorhandler(405)
    def wrong_method(_):
        return jsonify({"error": f"{request.method} is not allowed on {request.path}"}), 405

    app.add_template_filter(admin_page.format_number, "num")
    app.add_template_filter(admin_page.format_when, "when")
    app.add_template_filter(admin_page.format_duration, "duration")

    @app.get("/")
    def admin():
        return render_template("admin.html", **admin_page.admin_view(backend, request.args.get("project")))

    @app.get("/projects/<int:project>/versions/<version>/report/<name>")
    def report(project, version, name):
        return send_file(admin_page.report_file(settings, str(project), version, name), max_age=3600)

    @app.get("/health")
    def health():
        return jsonify(backend.health())

    @app.post("/setup")
    def setup():
        return jsonify(backend.setup(json_body()))

    @app.post("/predict")
    def predict():
        return jsonify(backend.predict(json_body()))

    @app.post("/webhook")
    def webhook():
        return jsonify(backend.webhook(json_body()))

    @app.get("/versions")
    def versions():
        return jsonify(backend.versions())

    @app.get("/projects/<int:project>/consensus")
    def consensus(project):
        return jsonify(backend.consensus_summary(str(project)))

    @app.get("/projects/<int:project>/consensus/tasks")
    def consensus_tasks(project):
        return jsonify(backend.consensus_tasks(str(project), request.args.get("state", "disputed")))

    @app.put("/projects/<int:project>/consensus/policy")
    def consensus_policy(project):
        return jsonify(backend.set_policy(str(project), json_body()))

    @app.post("/projects/<int:project>/resync")
    def resync(project):
        return jsonify(backend.resync(str(project)))

    @app.post("/projects/<int:project>/snapshot")
    def snapshot(project):
        return jsonify(backend.snapshot(str(project)))

    @app.post("/projects/<int:project>/train")
    def train(project):
        raw = request.get_data(cache=True)
        return jsonify(backend.train(str(project), json_body() if raw.strip() else {}, "admin")), 202

    @app.post("/train")
    def legacy_train():
        return jsonify(backend.legacy_train(json_body())), 202

    @app.get("/projects/<int:project>/jobs")
    def jobs(project):
        return jsonify(backend.jobs(str(project)))

    @app.get("/projects/<int:project>/jobs/<job_id>")
    def job(project, job_id):
        return jsonify(backend.job(str(project), job_id))

    @app.post("/projects/<int:project>/jobs/<job_id>/cancel")
    def cancel(project, job_id):
        return jsonify(backend.cancel(str(project), job_id))

    @app.get("/projects/<int:project>/versions")
    def project_versions(project):
        return jsonify(backend.project_versions(str(project)))

    @app.post("/projects/<int:project>/versions/<version>/promote")
    def promote(project, version):
        return jsonify(backend.promote(str(project), version))

    @app.get("/metrics")
    def metrics():
        data, content_type = render()
        return Response(data, mimetype=content_type.split(";")[0])

    return app


def json_body():
    raw = request.get_data(cache=True)
    if not raw:
        raise RequestError("empty body; expected JSON")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"body is not valid JSON ({exc})") from None
    except RecursionError:  # e.g. "[[[[..." thousands deep: the client's mistake, not a 500
        raise RequestError("body is not valid JSON (nested too deeply)") from None
