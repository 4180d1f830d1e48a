"""The admin page, its report images, and the Prometheus metrics. The JSON API the page and
scripts use has a blueprint per service: versions_routes, consensus_routes, jobs_routes."""
from __future__ import annotations

from flask import Blueprint, Response, render_template, request, send_file

from backend.core.metrics import render
from backend.http import admin_page
from backend.http.current import services

admin = Blueprint("admin", __name__)
admin.add_app_template_filter(admin_page.format_number, "num")
admin.add_app_template_filter(admin_page.format_when, "when")
admin.add_app_template_filter(admin_page.format_duration, "duration")


@admin.get("/")
def page():
    view = admin_page.admin_view(services(), request.args.get("project"))
    return render_template("admin.html", **view), 503 if view.get("error") else 200


@admin.get("/projects/<project:project>/versions/<version>/report/<name>")
def report(project, version, name):
    return send_file(admin_page.report_file(services().settings, project, version, name), max_age=3600)


@admin.get("/metrics")
def metrics():
    data, content_type = render()
    return Response(data, mimetype=content_type.split(";")[0])
