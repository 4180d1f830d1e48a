"""The admin's endpoints: the admin page, and the JSON API it and scripts use (consensus, jobs,
versions, promotion, resync, snapshots, metrics). They answer only under this backend's own host
names (RequestPolicy.admin_refusal)."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, render_template, request, send_file

from backend.http import admin_page
from backend.http.labelstudio_routes import backend
from backend.http.policy import json_body, request_body
from backend.http.prometheus_metrics import render
from backend.service import require_confirmation

admin = Blueprint("admin", __name__)
admin.add_app_template_filter(admin_page.format_number, "num")
admin.add_app_template_filter(admin_page.format_when, "when")
admin.add_app_template_filter(admin_page.format_duration, "duration")

PROJECT = "/projects/<project:project>"
# the page runs only its own script and stylesheet; the bars' widths are inline style attributes.
# No page elsewhere may frame it (X-Frame-Options for browsers without CSP, backend/http/app.py).
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
REPORT_MAX_AGE_S = 3600
# (rule, method, the name of the Backend method answering it): the URL's parts are its keyword
# arguments, its dict the JSON answer; looked up on each request, as every other route does
JSON_ROUTES = [
    (f"{PROJECT}/consensus", "GET", "consensus_summary"),
    (f"{PROJECT}/resync", "POST", "resync"),
    (f"{PROJECT}/snapshot", "POST", "snapshot"),
    (f"{PROJECT}/jobs", "GET", "jobs"),
    (f"{PROJECT}/jobs/<job_id>", "GET", "job"),
    (f"{PROJECT}/jobs/<job_id>/cancel", "POST", "cancel"),
    (f"{PROJECT}/versions", "GET", "project_versions"),
    (f"{PROJECT}/versions/<version>/promote", "POST", "promote"),
    (f"{PROJECT}/refresh", "GET", "refresh_jobs"),
    (f"{PROJECT}/refresh", "POST", "refresh"),
    (f"{PROJECT}/refresh/<job_id>/cancel", "POST", "cancel_refresh"),
]


def _answering_with(name: str):
    def view(**url_parts):
        return jsonify(getattr(backend(), name)(**url_parts))
    return view


for _rule, _method, _name in JSON_ROUTES:
    admin.add_url_rule(_rule, _name, _answering_with(_name), methods=[_method])


@admin.get("/")
def page():
    view = admin_page.admin_view(backend(), request.args.get("project"))
    return (render_template("admin.html", **view), 503 if view.get("error") else 200,
            {"Content-Security-Policy": PAGE_POLICY})


@admin.get(f"{PROJECT}/versions/<version>/report/<name>")
def report(project, version, name):
    response = send_file(admin_page.report_file(backend().settings, project, version, name), max_age=REPORT_MAX_AGE_S)
    # behind Basic auth: the admin's browser may keep it, a shared cache (a proxy) may not
    response.cache_control.public = False
    response.cache_control.private = True
    return response


@admin.get(f"{PROJECT}/consensus/tasks")
def consensus_tasks(project):
    return jsonify(backend().consensus_tasks(project, request.args.get("state", "disputed")))


@admin.put(f"{PROJECT}/consensus/policy")
def consensus_policy(project):
    return jsonify(backend().set_policy(project, json_body()))


@admin.post(f"{PROJECT}/train")
def train(project):
    raw = request_body()
    return jsonify(backend().train(project, json_body() if raw.strip() else {}, "admin")), 202


@admin.post(f"{PROJECT}/rollback")
def roll_back(project):
    raw = request_body()
    require_confirmation(json_body() if raw.strip() else {})
    return jsonify(backend().roll_back(project))


@admin.get("/metrics")
def metrics():
    data, content_type = render()
    return Response(data, mimetype=content_type.split(";")[0])
