"""Model versions: the base version a project starts from, and each project's current one.

Folders live under the data directory:
    base/<name>/                      one per backbone, init and class lists
    projects/<id>/versions/<name>/    trained versions of a project
The pointer to a project's current version is a Redis key, so every process sees the same one.

A deployment may register a trained version folder as its base model (`AESEMO_BASE_MODEL`, or
`aesemo base set`, a Redis key): projects whose class lists match start from it, and serve it
until they have their own trained version, instead of the untrained base version.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import redis

from model.classes import DEFAULT_CLASSES
from model.network import NetConfig
from model.pipeline import init_version
from model.pretrained import check_pretrained_setting, resolve_pretrained, weights_on_disk
from model.version import META_FILE, is_trained, training_dtype, training_seconds

from backend.core import keys
from backend.serving.suggestions import UNTRAINED_SUFFIX, withheld_types
from backend.serving.version_cache import local_version, version_lease
from backend.serving.version_store import version_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionRef:
    name: str
    folder: Path


def _classes_digest(classes: dict) -> str:
    text = json.dumps({k: list(v) for k, v in sorted(classes.items())})
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def base_version_name(settings, classes: dict, weights: bool | None = None) -> str:
    """Cheap (a stat, no model, no download): `/setup` answers with it before any model exists.
    `weights`: whether the base starts from ImageNet weights, when already known."""
    if weights is None:
        weights = weights_on_disk(settings.backbone, settings.pretrained_path)
    name = f"base-{settings.backbone}-{'imagenet' if weights else 'random'}"
    default = {k: tuple(v) for k, v in DEFAULT_CLASSES.items()}
    if {k: tuple(v) for k, v in classes.items()} != default:
        name += "-" + _classes_digest(classes)
    return name + UNTRAINED_SUFFIX  # ensure_base_version writes fresh heads


def base_version_ref(settings, classes: dict) -> VersionRef:
    """Where the base version for these class lists lives, written or not."""
    name = base_version_name(settings, classes)
    return VersionRef(name, Path(settings.data_dir) / "base" / name)


def ensure_base_version(settings, classes: dict) -> VersionRef:
    """The base version folder, written once (under a file lock shared by all processes). The
    weights are fetched first (when missing and allowed), and the name follows what was had: a
    failed download of the default writes, and from then on serves, a `random` base."""
    ref = base_version_ref(settings, classes)
    name, folder = ref.name, ref.folder
    if (folder / META_FILE).is_file():
        return VersionRef(name, folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / ".base.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        weights = resolve_pretrained(settings.backbone, settings.pretrained_path, settings.offline)
        name = base_version_name(settings, classes, weights is not None)
        folder = folder.parent / name
        if not (folder / META_FILE).is_file():
            log.info("writing base version %s", name)
            config = NetConfig(backbone=settings.backbone, aesthetic_classes=tuple(classes["aesthetic"]),
                               emotion_classes=tuple(classes["emotion"]))
            init_version(folder, config, weights, use_pretrained=weights is not None)
    return VersionRef(name, folder)


REGISTERED_PREFIX = "registered-"


def base_problem(folder: Path, thorough: bool = True) -> str | None:
    """Why `folder` cannot be the deployment's base model, None when it can: a version folder
    whose heads saw labelled images; `thorough` also checks the weights (hash, finite outputs)."""
    from model.errors import VersionError
    from model.version import read_meta
    try:
        meta = read_meta(folder)
    except VersionError as exc:
        return str(exc)
    if not is_trained(meta):
        return f"{folder} holds an untrained version; register one trained on labelled images"
    return refusal(folder) if thorough else None


def register_base(client: redis.Redis, folder: Path | None) -> dict:
    """Registers `folder` (None: no base model) after checking it thoroughly."""
    from backend.core.errors import Conflict
    if folder is None:
        client.delete(keys.BASE_MODEL)
        return {"base_model": None}
    folder = Path(folder).resolve()
    why = base_problem(folder)
    if why:
        raise Conflict(f"{folder} not registered as the base model: {why}")  # the operator's own path
    client.set(keys.BASE_MODEL, str(folder))
    return {"base_model": str(folder), "name": REGISTERED_PREFIX + folder.name}


def registered_base(client: redis.Redis, settings) -> tuple[VersionRef | None, str | None]:
    """The registered base model and where it was registered ("setting" or "command")."""
    if settings.base_model is not None:
        folder, source = Path(settings.base_model), "setting"
    else:
        stored = client.get(keys.BASE_MODEL)
        if not stored:
            return None, None
        folder, source = Path(stored), "command"
    return VersionRef(REGISTERED_PREFIX + folder.name, folder), source


def describe_base(client: redis.Redis, settings) -> dict | None:
    """What `/versions` and the admin page show about the registered base model."""
    ref, source = registered_base(client, settings)
    if ref is None:
        return None
    meta, reason = version_meta(ref.folder)
    return {"name": ref.name, "folder": str(ref.folder), "registered_by": source,
            "classes": meta and meta.get("classes"), "problem": reason,
            "label": f"base model {ref.folder.name} (registered)"}


def _matching_base(client: redis.Redis, settings, classes: dict) -> VersionRef | None:
    ref, _ = registered_base(client, settings)
    if ref is None:
        return None
    meta, _ = version_meta(ref.folder)
    return ref if meta is not None and meta.get("classes") == {k: list(v) for k, v in classes.items()} else None


def base_for(client: redis.Redis, settings, classes: dict) -> VersionRef:
    """The registered base model when its class lists are the project's, else the base version."""
    return _matching_base(client, settings, classes) or ensure_base_version(settings, classes)


def base_ref(client: redis.Redis, settings, classes: dict) -> VersionRef:
    """`base_for`'s version without writing or loading a model (`/setup` answers with its name)."""
    return _matching_base(client, settings, classes) or base_version_ref(settings, classes)


def is_trained_version(folder: Path) -> bool:
    """Whether the version in `folder` was trained on labels (model.json, see model.version's
    `is_trained`). A base version not written yet will be untrained, and a model.json that cannot
    be read never serves, so neither counts as trained."""
    if not (folder / META_FILE).is_file():
        return False
    meta, _ = version_meta(folder)
    return meta is not None and is_trained(meta)


def prepare_start(settings) -> None:
    """`serve` and `worker` at start: AESEMO_BASE_MODEL must hold a trained version, and a named
    pretrained file must exist and a named URL is fetched now, so each stops the start with one
    line; the default is fetched too (into torchvision's cache), and its failed download only logs
    (the base version then starts random)."""
    why = base_problem(settings.base_model, thorough=False) if settings.base_model else None
    if why:
        raise ValueError(f"setting AESEMO_BASE_MODEL={settings.base_model}: {why}")
    check_pretrained_setting(settings.pretrained_path)
    resolve_pretrained(settings.backbone, settings.pretrained_path, settings.offline)


def project_versions_dir(settings, project: str) -> Path:
    return Path(settings.data_dir) / "projects" / project / "versions"


_NAME_MAX = 255  # bytes of one file name on Linux's file systems: a longer one fails stat() (ENAMETOOLONG)


def valid_version_name(name: str) -> bool:
    """A name with a slash, or a leading dot (a version still being written), never names a version."""
    return "/" not in name and not name.startswith(".") and 0 < len(name.encode()) <= _NAME_MAX


def version_folder(settings, project: str, name: str) -> Path | None:
    """The folder of the project's version `name` on this host; None when there is none here."""
    folder = project_versions_dir(settings, project) / name
    if not valid_version_name(name) or not (folder / META_FILE).is_file():
        return None
    return folder


def is_published(settings, project: str, name: str) -> bool:
    """Whether the project has the version: in the object store when there is one, else a folder."""
    store = version_store(settings)
    if not valid_version_name(name):
        return False
    if store.shared:
        return store.manifest(project, name) is not None
    return version_folder(settings, project, name) is not None


def next_version_number(settings, project: str) -> int:
    """One more than the highest `vNNNN` among the project's versions, here and in the store:
    numbers never repeat, also after retention deleted older versions."""
    names = {p.name for p in project_versions_dir(settings, project).glob("v*")}
    store = version_store(settings)
    if store.shared:
        names.update(store.names(project))
    return 1 + max((int(m.group(1)) for n in names if (m := re.match(r"v(\d+)", n))), default=0)


def current_version_name(client: redis.Redis, project: str) -> str | None:
    return client.get(keys.current_version(project))


def set_current_version(client: redis.Redis, project: str, name: str) -> None:
    """Point the project at `name` (one atomic SET) and tell every serving process."""
    client.set(keys.current_version(project), name)
    client.publish(keys.VERSION_CHANNEL, json.dumps({"project": project, "version": name}))


def promote_version(client: redis.Redis, settings, project: str, name: str) -> dict:
    """Make `name` current (also a rollback), after checking that it may serve: see `refusal`."""
    from backend.core.errors import Conflict, NotFound
    if not is_published(settings, project, name):
        raise NotFound(f"project {project} has no version {name!r}")
    with version_lease(client, project, name):  # retention keeps it until it is current
        why = refusal(local_version(settings, client, project, name))
        if why:
            raise Conflict(f"version {name} cannot be promoted: {why}")
        previous = current_version_name(client, project)
        set_current_version(client, project, name)
    return {"project": project, "current": name, "previous": previous}


def roll_back_to_base(client: redis.Redis, settings, project: str, classes: dict) -> dict:
    """Serve the project's base again (the registered base model when its class lists are the
    project's, else the untrained base version), after the check every promotion passes. The
    pointer is cleared rather than set: a base is no version of the project's own."""
    from backend.core.errors import Conflict
    base = base_for(client, settings, classes)
    why = refusal(base.folder)
    if why:
        raise Conflict(f"the base version {base.name} cannot serve: {why}")
    previous = current_version_name(client, project)
    client.delete(keys.current_version(project))
    client.publish(keys.VERSION_CHANNEL, json.dumps({"project": project, "version": base.name,
                                                     "folder": str(base.folder)}))
    return {"project": project, "current": base.name, "previous": previous, "base": True}


def refusal(folder: Path) -> str | None:
    """Why the version in `folder` must never become current, None when it may: its model.json
    is malformed, its weights fail the hash check or hold NaN or infinity, or it answers
    non-finite outputs. The one check of every promotion, by hand or by a training job."""
    from model.errors import VersionError
    from model.version import check_outputs, load_version
    try:
        model, meta = load_version(folder)
        check_outputs(model, meta)
    except VersionError as exc:
        return str(exc)
    return None


def version_meta(folder: Path) -> tuple[dict | None, str | None]:
    """A version's metadata, or None and why it is skipped (logged once per state of the file)."""
    from model.errors import VersionError
    from model.version import read_meta
    try:
        return read_meta(folder), None
    except VersionError as exc:
        reason = str(exc)
    try:
        stamp = (folder / META_FILE).stat().st_mtime_ns
    except OSError:
        stamp = None
    if (folder, stamp, reason) not in _LOGGED:
        _LOGGED.add((folder, stamp, reason))
        log.warning("skipped model version %s: %s", folder.name, reason)
    return None, reason


_LOGGED: set = set()  # skipped versions already logged: listings are asked for often


def project_versions(settings, project: str) -> tuple[list[dict], list[dict]]:
    """The project's trained versions, oldest first, each with its metadata summary; and the
    versions skipped, each with the reason."""
    store, out, skipped = version_store(settings), [], []
    for name in store.names(project):
        meta, reason = (_store_meta(store, project, name) if store.shared
                        else version_meta(project_versions_dir(settings, project) / name))
        if meta is None:
            skipped.append({"version": name, "reason": reason})
            continue
        out.append({"version": name, "created_at": meta.get("created_at"),
                    "parent": meta.get("parent_version"), "snapshot": meta.get("snapshot_id"),
                    "metrics": _metric_summary(meta.get("metrics") or {}),
                    "device": (meta.get("training") or {}).get("device"),
                    "training_seconds": training_seconds(meta), "training_dtype": training_dtype(meta),
                    "backbone": meta["architecture"].get("backbone"), "trained": is_trained(meta),
                    "withheld_types": withheld_types(settings, meta)})
    return sorted(out, key=lambda v: v["created_at"] or ""), skipped


def _store_meta(store, project: str, name: str) -> tuple[dict | None, str | None]:
    from model.errors import VersionError
    try:
        return store.meta(project, name), None
    except VersionError as exc:
        return None, str(exc)


def _metric_summary(metrics: dict) -> dict:
    # n: how many held-out tasks the scores rest on (0.000 on 2 tasks says little)
    return {task: None if m is None else {"accuracy": m.get("accuracy"), "macro_f1": m.get("macro_f1"),
                                          "n": _count(m.get("n")), **_intervals(m.get("ci"))}
            for task, m in metrics.items()}


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _intervals(ci) -> dict:
    """The bootstrap intervals training stored (model/bootstrap.py), when well formed: model.json's
    check does not look at them, and the admin page prints them."""
    def interval(value) -> bool:
        return isinstance(value, list) and len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not isinstance(ci, dict) or not all(interval(ci.get(key)) for key in ("accuracy", "macro_f1")):
        return {}
    return {"ci": {"accuracy": ci["accuracy"], "macro_f1": ci["macro_f1"]}}


def resolve_current(client: redis.Redis, settings, project: str, classes: dict) -> VersionRef:
    """The project's current trained version, or the base for its class lists (see `base_for`)."""
    name = current_version_name(client, project)
    if name:
        return VersionRef(name, project_versions_dir(settings, project) / name)
    return base_for(client, settings, classes)


def fetch_current(client: redis.Redis, settings, project: str, classes: dict) -> VersionRef:
    """`resolve_current`'s version with its files on this host (downloaded from the object store
    when there is one): what a job loads."""
    ref = resolve_current(client, settings, project, classes)
    if ref.folder != project_versions_dir(settings, project) / ref.name:
        return ref
    with version_lease(client, project, ref.name):
        return VersionRef(ref.name, local_version(settings, client, project, ref.name))


def all_versions(settings) -> tuple[list[str], list[dict]]:
    """Every version's name (base versions first), and the versions skipped with the reason."""
    data = Path(settings.data_dir)
    folders = [p.parent for p in sorted((data / "base").glob(f"*/{META_FILE}"))]
    folders += [p.parent for p in sorted((data / "projects").glob(f"*/versions/*/{META_FILE}"))
                if not p.parent.name.startswith(".")]
    names, skipped = [], []
    for folder in folders:
        meta, reason = version_meta(folder)
        if meta is None:
            skipped.append({"version": folder.name, "reason": reason})
        else:
            names.append(folder.name)
    return names, skipped
