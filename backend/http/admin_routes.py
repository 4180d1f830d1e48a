"""The admin page, its report images, and the Prometheus metrics. The JSON API the page and
scripts use has a blueprint per service: versions_routes, consensus_routes, jobs_routes. All of
them answer only under this backend's own host names (RequestPolicy.admin_refusal)."""
from __future__ import annotations

from flask import Blueprint, Response, render_template, request, send_file

from backend.core.metrics import render
from backend.http import admin_page
from backend.http.current import services

admin = Blueprint("admin", __name__)
admin.add_app_template_filter(admin_page.format_number, "num")
admin.add_app_template_filter(admin_page.format_when, "when")
admin.add_app_template_filter(admin_page.format_duration, "duration")

# the page runs only its own script and stylesheet; the bars' widths are inline style attributes.
# No page elsewhere may frame it (X-Frame-Options for browsers without CSP, backend/http/app.py).
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
REPORT_MAX_AGE_S = 3600


@admin.get("/")
def page():
    view = admin_page.admin_view(services(), request.args.get("project"))
    return (render_template("admin.html", **view), 503 if view.get("error") else 200,
            {"Content-Security-Policy": PAGE_POLICY})


@admin.get("/projects/<project:project>/versions/<version>/report/<name>")
def report(project, version, name):
    response = send_file(admin_page.report_file(services().settings, project, version, name),
                         max_age=REPORT_MAX_AGE_S)
    # behind Basic auth: the admin's browser may keep it, a shared cache (a proxy) may not
    response.cache_control.public = False
    response.cache_control.private = True
    return response


@admin.get("/metrics")
def metrics():
    data, content_type = render()
    return Response(data, mimetype=content_type.split(";")[0])
