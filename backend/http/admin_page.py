"""What the admin page at `/` shows, gathered with no Flask in sight: one dict per page.

Each section is gathered on its own, so a project whose consensus cannot be computed (no
label config yet, say) still shows its versions and jobs, with the reason in that section.
"""
from __future__ import annotations

import logging
from pathlib import Path

import redis

from backend.fetch import tokens as ls_auth
from backend.core.errors import DomainError, NotFound
from backend.serving.registry import base_ref, is_trained_version, valid_version_name
from backend.serving.version_cache import report_copy, report_names
from backend.serving.suggestions import withheld_reason
from backend.services.process import Services

log = logging.getLogger(__name__)

ACTIVE_JOB_STATES = ("queued", "started", "deferred", "scheduled")
DISPUTED_SHOWN = 50  # the rest is one click away, in the JSON list


def admin_view(services: Services, selected: str | None) -> dict:
    """Every known project, and the panel of the selected one (default: the first)."""
    try:
        projects, invalid = services.projects.store.known_and_invalid()
    except redis.RedisError as exc:
        log.warning("admin page: Redis error: %s", exc)
        return {"projects": [], "project": None, "unknown_project": False,
                "error": f"Redis is unavailable ({type(exc).__name__}): nothing can be shown until it answers"}
    project = selected if selected in projects else (projects[0] if projects else None)
    view = {"projects": projects, "project": project, "unknown_project": selected not in (None, *projects),
            "invalid_projects": invalid}
    if project is not None:
        view.update(project_panel(services, project))
    return view


def project_panel(services, project: str) -> dict:
    return {
        "label_studio": label_studio_url(services, project),
        "versions": _section(lambda: versions_section(services, project)),
        "jobs": _section(lambda: jobs_section(services, project)),
        "consensus": _section(lambda: consensus_section(services, project)),
        "refresh": _section(lambda: refresh_section(services, project)),
    }


def label_studio_url(services, project: str) -> str | None:
    """Where the admin's browser reaches Label Studio: the host Label Studio itself announced in
    /setup (its public address), else LABEL_STUDIO_URL (which may be a container-network name).
    Only an http(s) URL becomes a link: a stored value may predate /setup's check, or have been
    written to Redis directly, and a javascript: one would run in the admin's page."""
    context = services.projects.context(project)
    candidates = ((context.hostname if context else None), services.settings.label_studio_url)
    url = next((c for c in candidates if ls_auth.is_http_url(c)), None)
    return url.rstrip("/") if url else None


def versions_section(services, project: str) -> dict:
    listing = services.versions.project_versions(project)
    versions = [{**v, "reports": report_images(report_names(services.settings, project, v["version"]))}
                for v in reversed(listing["versions"])]
    current = next((v for v in versions if v["current"]), None)
    return {"current_name": listing["current"], "current": current, "versions": versions,
            "rollback_to": rollback_target(services, project) if current else None,
            "skipped": listing["skipped"], "base_model": listing["base_model"], "keep_versions": listing["keep_versions"],
            "untrained": untrained_banner(services, project, current), "inference": inference_path(services, project)}


def inference_path(services, project: str) -> dict | None:
    """How this process serves the project's model (OpenVINO int8/fp32 or PyTorch) and why;
    None before its first prediction loaded one."""
    served = services.swap.get(project)
    if served is None:
        return None
    return {"version": served.version, "path": served.path, "reason": served.path_reason}


def rollback_target(services, project: str) -> str:
    """The base version a rollback serves (its name only: nothing is written or loaded)."""
    return base_ref(services.redis, services.settings, services.projects.project_labels(project).classes()).name


def untrained_banner(services, project: str, listed: dict | None = None) -> dict | None:
    """What the page says when the project serves a version never trained on labels (None when
    it serves a trained one): its suggestions are random, whether they are withheld, and the fix.
    `listed`: the current version's entry in the listing (read from the store when there is one)."""
    if listed is not None and listed.get("trained"):
        return None
    served = services.projects.version_ref(project, services.projects.project_labels(project))
    if is_trained_version(served.folder):
        return None
    return {"version": served.name, "withheld": withheld_reason(services.settings, served.name, False) is not None,
            "min_labels": services.settings.min_training_labels}


def report_images(names: list[str]) -> list[str]:
    """The confusion-matrix PNGs among a version's report files, aesthetic first."""
    pngs = (n for n in names if n.startswith("confusion_") and n.endswith(".png"))
    return sorted(pngs, key=lambda n: (n != "confusion_aesthetic.png", n))


def jobs_section(services, project: str) -> dict:
    jobs = services.training.jobs(project)["jobs"]
    for job in jobs:
        job["fraction"] = progress_fraction(job)
    active = [j for j in jobs if j["status"] in ACTIVE_JOB_STATES]
    return {"active": active, "recent": [j for j in jobs if j not in active]}


def progress_fraction(job: dict) -> float | None:
    """How far a job's running stage has got, 0..1: a counted stage from its count, training from
    its epoch and step; None for a stage with neither (an indeterminate bar, never another
    stage's figure)."""
    progress = job.get("progress") or {}
    if job.get("status") == "finished":
        return 1.0
    if progress.get("total"):
        return min(1.0, (progress.get("done") or 0) / progress["total"])
    if progress.get("state") not in (None, "training"):
        return None
    epochs, steps = progress.get("epochs"), progress.get("steps")
    epoch, step = progress.get("epoch"), progress.get("step")
    if not (epochs and steps and epoch and step is not None):
        return None
    return min(1.0, ((epoch - 1) * steps + step) / (epochs * steps))


def consensus_section(services, project: str) -> dict:
    summary, disputed = services.consensus.overview(project, "disputed")
    dimensions = {d: v for d, v in summary.items() if isinstance(v, dict) and "tasks" in v}
    return {"policy": summary.get("policy"), "dimensions": dimensions, "disputed": disputed[:DISPUTED_SHOWN],
            "disputed_total": len(disputed), "anchoring": summary.get("anchoring") or {},
            "control_fraction": services.settings.control_fraction}


def refresh_section(services, project: str) -> dict:
    """The project's latest prediction-refresh jobs (backend/serving/refresh.py), newest first."""
    jobs = [{**job, "shown_status": refresh_status(job)} for job in services.versions.refresh_jobs(project)["jobs"]]
    return {"queue": services.settings.predict_queue, "jobs": jobs}


def refresh_status(job: dict) -> str:
    """The job's own state while it runs (listing, refreshing, superseded...), "skipped" when it
    had nothing to write into, and RQ's status once it ended badly: a job that failed before its
    first step still carries the "queued" it was submitted with."""
    progress = job.get("progress") or {}
    if job.get("status") in ("failed", "cancelled", "stopped"):
        return job["status"]
    if progress.get("skipped"):
        return "skipped"
    return progress.get("state") or job.get("status") or ""


def _section(gather) -> dict:
    try:
        return gather()
    except DomainError as exc:
        return {"error": str(exc)}
    except redis.RedisError as exc:
        log.warning("admin page: Redis error: %s", exc)
        return {"error": f"Redis is unavailable ({type(exc).__name__})"}


def report_file(settings, project: str, version: str, name: str) -> Path:
    """A file of a version's report (its confusion PNGs, metrics.json); 404 for anything else."""
    path = None
    if valid_version_name(version) and "/" not in name and not name.startswith("."):
        path = report_copy(settings, project, version, name)
    if path is None:
        raise NotFound(f"project {project} has no report file {version}/{name}")
    return path


# -- how the page writes numbers and times ---------------------------------------------------

def format_number(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.3f}"
    return str(value)


def format_when(iso: str | None) -> str:
    """An ISO timestamp as `2026-11-27 16:40:12` (UTC, as stored)."""
    if not iso:
        return ""
    return iso.replace("T", " ")[:19]


def format_duration(seconds) -> str:
    if seconds is None:
        return "–"
    seconds = max(0, int(round(float(seconds))))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"
