"""`aesemo worker`: an RQ worker for training jobs that never forks after CUDA is initialised.

RQ's default worker forks a child per job, and CUDA cannot be initialised again in a forked
child, so this runs jobs in its own process (RQ's SimpleWorker). More GPUs: more worker
processes (one per GPU via CUDA_VISIBLE_DEVICES), on any machine that reaches the same Redis
and data directory.
"""
from __future__ import annotations

import logging
import os

from rq import SimpleWorker

from .jobs import raw_connection, training_queue
from .settings import load_settings

log = logging.getLogger(__name__)


def run_worker(queue: str | None = None, device: str | None = None, burst: bool = False) -> bool:
    if device:
        os.environ["AESEMO_TRAIN_DEVICE"] = device  # the job reads its settings afresh
    settings = load_settings()
    if queue:
        settings = settings.__class__(**{**settings.__dict__, "training_queue": queue})
    import torch
    chosen = settings.train_device or ("cuda" if torch.cuda.is_available() else "cpu")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    log.info("training worker on queue %r, device %s%s", settings.training_queue, chosen,
             f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
    if chosen.startswith("cuda"):
        log.info("GPU: %s", torch.cuda.get_device_name(torch.device(chosen)))
    connection = raw_connection(settings)
    worker = SimpleWorker([training_queue(settings, connection)], connection=connection)
    return worker.work(burst=burst, with_scheduler=False)
