"""The Flask app factory: thin handlers around `service.Backend`."""
from __future__ import annotations

import json
import logging
import time

from flask import Flask, Response, g, jsonify, render_template, request, send_file
from werkzeug.http import HTTP_STATUS_CODES

from . import admin_page
from .auth import basic_auth_ok, same_origin
from .errors import RequestError
from .metrics import observe_request, render
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

    def authorized(header: str | None) -> bool:
        return not settings.basic_auth_user or basic_auth_ok(header, settings.basic_auth_user,
                                                             settings.basic_auth_pass or "")

    @app.before_request
    def start():
        g.started = time.perf_counter()
        if not authorized(request.headers.get("Authorization")):
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
        observe_request(endpoint, request.method, response.status_code, g.get("started", time.perf_counter()))
        return response

    @app.errorhandler(RequestError)
    def request_error(exc: RequestError):
        return jsonify(error_body(exc)), exc.status

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
        view = admin_page.admin_view(backend, request.args.get("project"))
        return render_template("admin.html", **view), 503 if view.get("error") else 200

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
    def webhook():  # what FastWebhook below does not take
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

    app.wsgi_app = FastWebhook(app.wsgi_app, backend, authorized, app.json)
    return app


class FastWebhook:
    """WSGI middleware: POST /webhook straight to `Backend.webhook`, without Flask's request
    machinery, which cost about as much CPU as the whole annotation event. It takes only an
    authorized request whose Content-Length is within the limit, before reading any of it,
    and answers as the Flask route does: the same JSON, error bodies and metrics. Anything
    else (other paths, wrong credentials, a cross-site Origin, a chunked or oversized body) goes to
    Flask untouched."""

    PATH = "/webhook"

    def __init__(self, flask_wsgi, backend: Backend, authorized, json_provider):
        self.flask_wsgi = flask_wsgi
        self.backend = backend
        self.authorized = authorized
        self.json = json_provider

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") != self.PATH or environ.get("REQUEST_METHOD") != "POST":
            return self.flask_wsgi(environ, start_response)
        length = environ.get("CONTENT_LENGTH") or ""
        if not (length.isascii() and length.isdigit() and int(length) <= MAX_BODY_BYTES) \
                or not self.authorized(environ.get("HTTP_AUTHORIZATION")) \
                or not same_origin(environ.get("HTTP_ORIGIN"), environ.get("HTTP_HOST", "")):
            return self.flask_wsgi(environ, start_response)
        started = time.perf_counter()
        try:
            status, reply = 200, self.backend.webhook(parse_json(environ["wsgi.input"].read(int(length))))
        except RequestError as exc:
            status, reply = exc.status, error_body(exc)
        except Exception:  # Flask would log it and answer 500 too
            log.exception("Exception on %s [POST]", self.PATH)
            status, reply = 500, {"error": "internal server error; see the server log"}
        # as jsonify: the app's JSON settings, compact, one newline
        body = (self.json.dumps(reply, separators=(",", ":")) + "\n").encode()
        start_response(f"{status} {HTTP_STATUS_CODES.get(status, 'UNKNOWN').upper()}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        observe_request(self.PATH, "POST", status, started)
        return [body]


def error_body(exc: RequestError) -> dict:
    body = {"error": str(exc)}
    if exc.details:
        body["errors"] = exc.details
    return body


def json_body():
    return parse_json(request.get_data(cache=True))


def parse_json(raw: bytes):
    if not raw:
        raise RequestError("empty body; expected JSON")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"body is not valid JSON ({exc})") from None
    except ValueError:  # Python refuses to convert an integer of over 4300 digits
        raise RequestError("body holds a number too long to read (over 4300 digits)") from None
    except RecursionError:  # e.g. "[[[[..." thousands deep: the client's mistake, not a 500
        raise RequestError("body is not valid JSON (nested too deeply)") from None
