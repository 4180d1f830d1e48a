"""`aesemo worker`: an RQ worker for training jobs that never forks after CUDA is initialised.

RQ's default worker forks a child per job, and CUDA cannot be initialised again in a forked
child, so this runs jobs in its own process (RQ's SimpleWorker). More GPUs: more worker
processes (one per GPU via CUDA_VISIBLE_DEVICES), on any machine that reaches the same Redis
and data directory.

A SimpleWorker cannot heartbeat while its job runs, so RQ gives the job's StartedJobRegistry
entry (and the worker's key) a TTL of the whole job timeout plus 60 s: a worker killed mid-job
(SIGKILL, OOM, a lost machine) would leave its job "started" for hours. This worker heartbeats
from a thread while the job runs, with a short TTL, so RQ's own registry cleanup marks a dead
worker's job failed (AbandonedJobError) soon after.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import replace

import redis
from rq import SimpleWorker
from rq.worker import WorkerStatus

from backend.jobs.connection import raw_connection
from backend.jobs.context import use_settings
from backend.training.queue import training_queue
from backend.serving.refresh_queue import predict_queue
from backend.core.settings import load_settings
from backend.serving.registry import prepare_start
# the job's code (torch included) loads before the first job, not once RQ has marked it started
import backend.training.job
import backend.serving.refresh  # noqa: F401

log = logging.getLogger(__name__)


class TrainingWorker(SimpleWorker):
    """RQ's SimpleWorker plus a heartbeat thread while a job runs (see the module docstring)."""

    def __init__(self, *args, heartbeat_s: float = 10.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.heartbeat_s = max(float(heartbeat_s), 0.5)

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        return int(3 * self.heartbeat_s + 5)

    def execute_job(self, job, queue):
        execution = self.prepare_execution(job)
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, execution, stop), name="job-heartbeat", daemon=True)
        beat.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            beat.join()
        self.set_state(WorkerStatus.IDLE)

    def _beat(self, job, execution, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            try:
                self.maintain_heartbeats(job, execution)
            except redis.RedisError as exc:
                log.warning("heartbeat of job %s failed: %s", job.id, exc)
            except Exception:  # keep beating: a silent stop would get a live job marked abandoned
                log.exception("heartbeat of job %s failed", job.id)


def run_worker(queue: str | None = None, device: str | None = None, burst: bool = False) -> bool:
    settings = load_settings()
    settings = replace(settings, train_device=device or settings.train_device,
                       training_queue=queue or settings.training_queue)
    prepare_start(settings)  # a bad AESEMO_PRETRAINED stops the worker now, not its first job
    import torch
    chosen = settings.train_device or ("cuda" if torch.cuda.is_available() else "cpu")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    log.info("worker on queues %r and %r, device %s%s", settings.predict_queue, settings.training_queue, chosen,
             f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
    if chosen.startswith("cuda"):
        log.info("GPU: %s", torch.cuda.get_device_name(torch.device(chosen)))
    connection = raw_connection(settings)
    # refreshes first: they take minutes and users wait on them; a training job takes hours
    worker = TrainingWorker([predict_queue(settings, connection), training_queue(settings, connection)],
                            connection=connection,
                            heartbeat_s=settings.job_heartbeat_s)
    use_settings(settings)  # the jobs this process runs read these
    try:
        return worker.work(burst=burst, with_scheduler=False)
    finally:
        use_settings(None)  # a burst worker run inside another program leaves no settings behind
