"""The `aesemo` subcommands that run or ask the service: serve, worker, stack, and the project
commands that answer as the HTTP API does (consensus, resync, train-project, jobs, versions, promote,
rollback, refresh), the base model and the embedded Redis."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from model.backbones import SPECS
from model.errors import AesemoError

from backend.cli.arguments import limited
from backend.votes.consensus import STATES

log = logging.getLogger("aesemo")


def cmd_stack(args) -> int:
    from backend.tools.stack import run_stack, stack_options
    return run_stack(stack_options(args.ls_port, args.backend_port, args.ls_venv))


def cmd_serve(args) -> int:
    from backend.http.server import serve
    serve(args.host, args.port, args.workers, args.threads)
    return 0


def _services():
    from backend.core.redis_connection import connect
    from backend.core.settings import load_settings
    from backend.services.process import Services
    settings = load_settings()
    return Services(settings, connect(settings))


def _print_answer(answer) -> int:
    """A project command's answer, as the HTTP API gives it, printed as indented JSON."""
    print(json.dumps(answer, indent=2))
    return 0


def cmd_consensus(args) -> int:
    consensus = _services().consensus
    if args.state:
        return _print_answer(consensus.tasks(str(args.project), args.state))
    return _print_answer(consensus.summary(str(args.project)))


def cmd_resync(args) -> int:
    return _print_answer(_services().consensus.resync(str(args.project)))


def cmd_worker(args) -> int:
    from backend.training.worker import run_worker
    run_worker(args.queue, args.device, args.burst)
    return 0


def cmd_train_project(args) -> int:
    return _print_answer(_services().training.train(str(args.project), _params(args), "command line"))


def _params(args) -> dict:
    return {k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                              "backbone": args.backbone}.items() if v is not None}


def cmd_jobs(args) -> int:
    return _print_answer(_services().training.jobs(str(args.project)))


def cmd_versions(args) -> int:
    return _print_answer(_services().versions.project_versions(str(args.project)))


def cmd_promote(args) -> int:
    return _print_answer(_services().versions.promote(str(args.project), args.version))


def cmd_rollback(args) -> int:
    if not args.yes:
        raise ValueError("aesemo rollback serves the base version to every annotator at once: add --yes to confirm")
    return _print_answer(_services().versions.roll_back(str(args.project), {"confirm": True}))


def cmd_refresh(args) -> int:
    return _print_answer(_services().versions.refresh(str(args.project)))


def cmd_refresh_jobs(args) -> int:
    return _print_answer(_services().versions.refresh_jobs(str(args.project)))


def cmd_base(args) -> int:
    from backend.core.redis_connection import connect
    from backend.core.settings import load_settings
    from backend.serving.registry import describe_base, register_base
    if args.action == "set" and not args.folder:
        raise ValueError("aesemo base set needs a trained version folder, or none")
    settings = load_settings()
    client = connect(settings)
    if args.action == "show":
        print(json.dumps(describe_base(client, settings), indent=2))
        return 0
    print(json.dumps(register_base(client, None if args.folder == "none" else Path(args.folder))))
    if settings.base_model is not None:
        log.warning("AESEMO_BASE_MODEL=%s is set and wins over this registration", settings.base_model)
    return 0


def cmd_redis(args) -> int:
    from backend.core.redis_connection import stop_unused_embedded_redis
    from backend.core.settings import load_settings
    settings = load_settings()
    if settings.redis_url:
        raise AesemoError("REDIS_URL is set: that Redis is not the embedded one, and not this command's to stop")
    print(json.dumps(stop_unused_embedded_redis(settings.data_dir)))
    return 0


def add_service_commands(sub) -> None:
    p = sub.add_parser("serve", help="run the Label Studio ML backend under gunicorn")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--workers", type=int, default=1, help="processes; each holds its own copy of the models")
    p.add_argument("--threads", type=int, default=4, help="threads per process, sharing its models")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("consensus", help="a project's consensus summary (or its tasks in one state)")
    p.add_argument("project", type=int)
    p.add_argument("--state", choices=STATES, default=None)
    p.set_defaults(func=cmd_consensus)

    p = sub.add_parser("resync", help="rebuild a project's votes from Label Studio's export")
    p.add_argument("project", type=int)
    p.set_defaults(func=cmd_resync)

    p = sub.add_parser("worker", help="run a worker for prediction-refresh and training jobs (RQ, no fork after CUDA init)")
    p.add_argument("--queue", default=None,
                   help="training queue name (default: $AESEMO_QUEUE or training); the predict queue is "
                        "$AESEMO_PREDICT_QUEUE")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    p.add_argument("--burst", action="store_true", help="stop when the queues are empty")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("train-project", help="ask for a training job for a Label Studio project")
    p.add_argument("project", type=int)
    p.add_argument("--epochs", type=limited("epochs"), default=None)
    p.add_argument("--batch-size", type=limited("batch_size"), default=None)
    p.add_argument("--lr", type=limited("lr"), default=None)
    p.add_argument("--backbone", default=None, choices=sorted(SPECS))
    p.set_defaults(func=cmd_train_project)

    p = sub.add_parser("jobs", help="a project's training jobs")
    p.add_argument("project", type=int)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("versions", help="a project's model versions")
    p.add_argument("project", type=int)
    p.set_defaults(func=cmd_versions)

    p = sub.add_parser("promote", help="make a version current (also a rollback)")
    p.add_argument("project", type=int)
    p.add_argument("version")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", help="serve the project's base version again (registered base model, or untrained)")
    p.add_argument("project", type=int)
    p.add_argument("--yes", action="store_true", help="confirm: every annotator's suggestions come from the base")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("refresh", help="queue a refresh of the predictions of a project's unlabelled tasks "
                       "in Label Studio (merged into the pending one); a worker serves the predict queue")
    p.add_argument("project", type=int)
    p.set_defaults(func=cmd_refresh)

    p = sub.add_parser("refresh-jobs", help="a project's prediction-refresh jobs and their progress")
    p.add_argument("project", type=int)
    p.set_defaults(func=cmd_refresh_jobs)

    p = sub.add_parser("stack", help="Label Studio, the backend, a worker and a demo project, until Ctrl-C")
    p.add_argument("--ls-port", type=int, default=8080, help="Label Studio's port on 127.0.0.1")
    p.add_argument("--backend-port", type=int, default=9090, help="the backend's port on 127.0.0.1")
    p.add_argument("--ls-venv", default=None,
                   help="virtualenv holding Label Studio (default: $LS_VENV or .venv-ls; made when missing)")
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("base", help="the deployment's base model: a trained version new projects start from")
    p.add_argument("action", choices=["set", "show"])
    p.add_argument("folder", nargs="?", default=None, help="set: a trained version folder, or none to unregister")
    p.set_defaults(func=cmd_base)

    p = sub.add_parser("redis", help="the data directory's embedded Redis (it also stops with its last user)")
    p.add_argument("action", choices=["stop"],
                   help="stop: shut it down (append-only file fsynced) unless a serve, worker or stack uses it")
    p.set_defaults(func=cmd_redis)
