"""The Flask app factory: thin handlers around `service.Backend`."""
from __future__ import annotations

import json
import logging
import time

import redis
from flask import Flask, Response, g, jsonify, render_template, request, send_file
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.routing import BaseConverter

from backend.http import admin_page
from backend.http.auth import basic_auth_ok, cross_site_refusal
from backend.core.errors import RequestError
from backend.http.prometheus_metrics import observe_request, render
from backend.labelstudio.projects import project_id
from backend.core.redis_connection import connect
from backend.service import Backend
from backend.core.settings import Settings, load_settings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
INTERNAL_ERROR = "internal server error; see the server log"
REDIS_DOWN = ("Redis is unreachable: votes, consensus, jobs and versions are unavailable until it is back "
              "(predictions still come from the models in memory)")
# what reading a body can raise for the client's mistakes: a broken chunked framing (gunicorn
# parses chunks as the app reads them) or a connection lost mid-body
_UNREADABLE_BODY = (ParseException, OSError)


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> Flask:
    settings = settings or load_settings()
    backend = backend or Backend(settings, connect(settings))
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["aesemo"] = backend
    app.url_map.converters["project"] = ProjectConverter

    def authorized(header: str | None) -> bool:
        return not settings.basic_auth_user or basic_auth_ok(header, settings.basic_auth_user,
                                                             settings.basic_auth_pass or "")

    @app.before_request
    def start():
        g.started = time.perf_counter()
        if not authorized(request.headers.get("Authorization")):
            return Response(json.dumps({"error": "wrong or missing Basic credentials"}), status=401,
                            mimetype="application/json", headers={"WWW-Authenticate": 'Basic realm="aesemo"'})
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            # a page elsewhere must not use the admin's browser (and its cached Basic
            # credentials) to promote versions or start jobs; servers send neither header
            refusal = cross_site_refusal(request.headers.get("Origin"), request.headers.get("Sec-Fetch-Site"),
                                         request.host)
            if refusal:
                return jsonify({"error": refusal}), 403

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

    @app.errorhandler(RequestError)
    def request_error(exc: RequestError):
        return jsonify(error_body(exc)), exc.status

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

    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    def redis_down(exc):
        log.warning("%s %s: Redis is unreachable (%s)", request.method, request.path, exc)
        return jsonify({"error": REDIS_DOWN}), 503

    @app.errorhandler(Exception)
    def internal_error(_):  # logged whole here; the client learns nothing of the internals
        log.exception("Exception on %s %s", request.method, request.path)
        return jsonify({"error": INTERNAL_ERROR}), 500

    app.add_template_filter(admin_page.format_number, "num")
    app.add_template_filter(admin_page.format_when, "when")
    app.add_template_filter(admin_page.format_duration, "duration")

    @app.get("/")
    def admin():
        view = admin_page.admin_view(backend, request.args.get("project"))
        return render_template("admin.html", **view), 503 if view.get("error") else 200

    @app.get("/projects/<project:project>/versions/<version>/report/<name>")
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

    @app.get("/projects/<project:project>/consensus")
    def consensus(project):
        return jsonify(backend.consensus_summary(str(project)))

    @app.get("/projects/<project:project>/consensus/tasks")
    def consensus_tasks(project):
        return jsonify(backend.consensus_tasks(str(project), request.args.get("state", "disputed")))

    @app.put("/projects/<project:project>/consensus/policy")
    def consensus_policy(project):
        return jsonify(backend.set_policy(str(project), json_body()))

    @app.post("/projects/<project:project>/resync")
    def resync(project):
        return jsonify(backend.resync(str(project)))

    @app.post("/projects/<project:project>/snapshot")
    def snapshot(project):
        return jsonify(backend.snapshot(str(project)))

    @app.post("/projects/<project:project>/train")
    def train(project):
        raw = request_body()
        return jsonify(backend.train(str(project), json_body() if raw.strip() else {}, "admin")), 202

    @app.post("/train")
    def legacy_train():
        return jsonify(backend.legacy_train(json_body())), 202

    @app.get("/projects/<project:project>/jobs")
    def jobs(project):
        return jsonify(backend.jobs(str(project)))

    @app.get("/projects/<project:project>/jobs/<job_id>")
    def job(project, job_id):
        return jsonify(backend.job(str(project), job_id))

    @app.post("/projects/<project:project>/jobs/<job_id>/cancel")
    def cancel(project, job_id):
        return jsonify(backend.cancel(str(project), job_id))

    @app.get("/projects/<project:project>/versions")
    def project_versions(project):
        return jsonify(backend.project_versions(str(project)))

    @app.post("/projects/<project:project>/versions/<version>/promote")
    def promote(project, version):
        return jsonify(backend.promote(str(project), version))

    @app.get("/metrics")
    def metrics():
        data, content_type = render()
        return Response(data, mimetype=content_type.split(";")[0])

    app.wsgi_app = FastWebhook(app.wsgi_app, backend, authorized, app.json)
    backend.swap.start()  # here, not on first use: a request never starts threads
    return app


class ProjectConverter(BaseConverter):
    """A project id in a URL, as text: `check_project` bounds it (int() refuses over 4,300
    digits, and werkzeug's int converter would answer that with a 404)."""
    regex = r"[0-9]+"


class FastWebhook:
    """WSGI middleware: POST /webhook straight to `Backend.webhook`, without Flask's request
    machinery, which cost about as much CPU as the whole annotation event. It takes only an
    authorized request whose Content-Length is within the limit, before reading any of it,
    and answers as the Flask route does: the same JSON, error bodies and metrics. Anything
    else (other paths, wrong credentials, a cross-site request, a chunked or oversized body) goes to
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
                or cross_site_refusal(environ.get("HTTP_ORIGIN"), environ.get("HTTP_SEC_FETCH_SITE"),
                                      environ.get("HTTP_HOST", "")):
            return self.flask_wsgi(environ, start_response)
        started = time.perf_counter()
        try:
            status, reply = 200, self.backend.webhook(parse_json(read_body(environ["wsgi.input"].read, int(length))))
        except RequestError as exc:
            status, reply = exc.status, error_body(exc)
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # as the Flask app's handlers
            log.warning("POST %s: Redis is unreachable (%s)", self.PATH, exc)
            status, reply = 503, {"error": REDIS_DOWN}
        except Exception:
            log.exception("Exception on POST %s", self.PATH)
            status, reply = 500, {"error": INTERNAL_ERROR}
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


def json_error(exc: HTTPException, message: str) -> Response:
    """werkzeug's answer for `exc` (its status and headers, e.g. 405's Allow) with a JSON body."""
    response = exc.get_response()
    response.set_data(json.dumps({"error": message}) + "\n")
    response.mimetype = "application/json"
    return response


def json_body():
    return parse_json(request_body())


def request_body() -> bytes:
    """The body; 413 over MAX_BODY_BYTES, chunked or not; 400 when it cannot be read."""
    if request.content_length is None:
        # werkzeug cuts a chunked body (no Content-Length to refuse up front) off at the limit
        # without a word: reading one byte more tells a body cut off from one that ended there
        request.max_content_length = MAX_BODY_BYTES + 1
    raw = read_body(request.get_data)
    if len(raw) > MAX_BODY_BYTES:
        raise RequestError(f"body over {MAX_BODY_BYTES} bytes", status=413)
    return raw


def read_body(read, *args) -> bytes:
    try:
        return read(*args)
    except _UNREADABLE_BODY as exc:
        raise RequestError(f"the request body could not be read ({type(exc).__name__}: {str(exc)[:200]})") from None


def parse_json(raw: bytes):
    if not raw:
        raise RequestError("empty body; expected JSON")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"body is not valid JSON ({exc})") from None
    except ValueError:  # Python refuses to convert an integer of over 4300 digits
        raise RequestError("body is not valid JSON for this server: it holds a number too long to read (over 4300 digits)") from None
    except RecursionError:  # e.g. "[[[[..." thousands deep: the client's mistake, not a 500
        raise RequestError("body is not valid JSON (nested too deeply)") from None
