"""A job's progress as its meta in the session's real Redis (an RQ job that is never run): each
stage named, its own count and ETA, never a previous stage's; the time each stage took; a
cancel request noticed at the next report, but not once the job has ended."""
from __future__ import annotations

import pytest
import redis
from rq import Queue
from rq.job import Job

from backend.core import keys
from backend.jobs.progress import JobCancelled, Progress


@pytest.fixture
def job(redis_url):
    raw = redis.Redis.from_url(redis_url)
    raw.flushdb()
    yield Queue("progress-test", connection=raw).enqueue_call("os.getpid")
    raw.flushdb()


def stored(job: Job) -> dict:
    return Job.fetch(job.id, connection=job.connection).meta["progress"]


def test_each_stage_has_its_name_title_count_and_eta_and_drops_the_previous_ones(job):
    progress = Progress(job, job.connection, None)
    progress.stage("images", "fetching 4 images into the training-image cache")
    assert stored(job)["state"] == "images" and stored(job)["title"].startswith("fetching 4 images")
    progress.counted(0, 4, "images")
    assert "eta_s" not in stored(job)   # no pace yet, so no ETA
    progress.counted(4, 4, "images")
    shown = stored(job)
    assert (shown["done"], shown["total"], shown["unit"]) == (4, 4, "images") and shown["eta_s"] == 0

    progress.stage("runtime", "making the promoted version's OpenVINO runtime for CPU serving")
    shown = stored(job)
    assert shown["state"] == "runtime"
    for field in ("done", "total", "unit", "eta_s"):   # the images' bar and ETA are not the runtime's
        assert field not in shown, (field, shown)
    assert [s["name"] for s in shown["stages"]] == ["images"]
    assert shown["stages"][0]["title"].startswith("fetching 4 images") and shown["stages"][0]["seconds"] >= 0


def test_training_fields_outlive_their_stage_and_finish_records_every_stage(job):
    progress = Progress(job, job.connection, None)
    progress.stage("training", "training")
    progress({"stage": "training", "epoch": 2, "epochs": 2, "step": 3, "steps": 3, "loss": 0.5, "eta_s": 0.0})
    progress({"stage": "stopped", "stopping": "stopped at epoch 2 of 10: no better held-out score for 3 epochs"})
    progress.stage("promotion", "comparing")
    progress.finish("finished", version="v0001")
    shown = stored(job)
    assert shown["state"] == "finished" and shown["version"] == "v0001"
    assert [s["name"] for s in shown["stages"]] == ["training", "promotion"]
    assert shown["epoch"] == 2 and shown["stopping"].startswith("stopped at epoch 2 of 10")
    assert "eta_s" not in shown and "title" not in shown


def test_a_cancel_request_stops_the_job_at_its_next_report_but_not_once_it_ended(job):
    progress = Progress(job, job.connection, None)
    progress.stage("training", "training")
    job.connection.set(keys.job_cancel(job.id), 1)
    with pytest.raises(JobCancelled):
        progress({"stage": "evaluated", "epoch": 1})
    progress.finish("failed")   # recording the failure is not cancelled again
    assert stored(job)["state"] == "failed" and [s["name"] for s in stored(job)["stages"]] == ["training"]
