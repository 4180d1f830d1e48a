"""Consensus over several annotators, end to end: a real Label Studio 1.23.2 with overlap 3,
three annotators made through the signup form, and the real backend (``aesemo serve``) fed by
Label Studio's webhooks.

1. Designed agreements and disagreements (all agree, 2-vs-1, all different, only two votes, an
   annotation updated so the majority flips, an annotation deleted, a skip) end in the expected
   per-state counts, label distribution, disputed list and per-annotator agreement.
2. The backend is stopped halfway through the stream; the rest of the annotations (plus one
   update and one delete) are made while it is down, so their webhooks are lost. Restarted on
   the same data directory it still has the earlier votes (embedded Redis, append-only file);
   ``POST /projects/<id>/resync`` adds exactly what was missed, and the training snapshot
   equals the training set computed here, independently, from Label Studio's own export.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from backend_proc import LABEL_CONFIG, BackendProcess, backend_env
from images_server import ImageServer
from annotating import Annotator, states, wait_until
from ls_server import LabelStudioServer
from net import free_port

MIN_ANNOTATORS = 3  # the backend's default policy: 3 voters, a unique top class with share >= 0.5


# ---------------------------------------------------------------------------------- helpers



def overlap_project(ls: LabelStudioServer, images: ImageServer, title: str, n_tasks: int = 6) -> tuple[int, list[int]]:
    """A project with every task needing 3 annotators, and ``n_tasks`` http-URL image tasks."""
    pid = ls.create_project(title, LABEL_CONFIG)["id"]
    tag = uuid.uuid4().hex[:6]
    urls = [images.add_png(f"{tag}-{i}", (40 * i % 256, 200 - 30 * i, 90)) for i in range(n_tasks)]
    ls.import_tasks(pid, [{"image": u} for u in urls])
    project = ls.update_project(pid, maximum_annotations=3, overlap_cohort_percentage=100)
    assert project["maximum_annotations"] == 3 and project["overlap_cohort_percentage"] == 100, project
    tasks = sorted(ls.tasks(pid), key=lambda t: t["id"])
    assert [t["data"]["image"] for t in tasks] == urls
    assert [t["overlap"] for t in tasks] == [3] * n_tasks, [t["overlap"] for t in tasks]
    return pid, [t["id"] for t in tasks]


def webhook_statuses(backend: BackendProcess, since: int = 0) -> Counter:
    """HTTP statuses of the /webhook calls in the backend's access log (after ``since`` chars)."""
    out: Counter = Counter()
    for line in backend.log_text()[since:].splitlines():
        if '"POST /webhook"' in line:
            out[line.split('"POST /webhook"', 1)[1].split()[0]] += 1
    return out


def consensus(backend: BackendProcess, pid: int) -> dict:
    r = backend.get(f"/projects/{pid}/consensus")
    assert r.status_code == 200, r.text
    return r.json()


def tasks_in_state(backend: BackendProcess, pid: int, state: str) -> list[dict]:
    r = backend.get(f"/projects/{pid}/consensus/tasks", params={"state": state})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == state and body["project"] == str(pid), body
    return body["tasks"]


def majority_training_set(export: list[dict]) -> dict[int, dict]:
    """The training rows, worked out here from Label Studio's JSON export alone: per task, each
    annotator's latest non-skipped annotation is one vote; a dimension is agreed with at least
    3 voters and a unique top class whose share is at least 0.5; a task with any agreed
    dimension is a row, with the vote shares (soft label) of its agreed dimensions."""
    rows = {}
    for task in export:
        latest: dict[int, dict] = {}
        for a in task.get("annotations") or []:
            if a.get("was_cancelled"):
                continue
            user = a["completed_by"]["id"] if isinstance(a["completed_by"], dict) else a["completed_by"]
            if user not in latest or (a["updated_at"], a["id"]) > (latest[user]["updated_at"], latest[user]["id"]):
                latest[user] = a
        row = {"task": task["id"], "image": task["data"]["image"], "aesthetic": None, "emotion": None}
        for dimension in ("aesthetic", "emotion"):
            chosen = [r["value"]["choices"][0] for a in latest.values() for r in a["result"]
                      if r["from_name"] == dimension]
            if len(chosen) < MIN_ANNOTATORS:
                continue
            counts = Counter(chosen).most_common()
            tied = len(counts) > 1 and counts[0][1] == counts[1][1]
            if not tied and counts[0][1] / len(chosen) >= 0.5:
                row[dimension] = {label: n / len(chosen) for label, n in counts}
        if row["aesthetic"] or row["emotion"]:
            rows[task["id"]] = row
    return rows


def top(soft: dict | None) -> str | None:
    return max(soft, key=soft.get) if soft else None


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def annotators(label_studio: LabelStudioServer) -> list[Annotator]:
    people = [Annotator(label_studio, name) for name in ("ann-a", "ann-b", "ann-c")]
    admin = label_studio.whoami()["id"]
    assert len({p.id for p in people} | {admin}) == 4, [p.id for p in people]
    return people


@pytest.fixture(scope="module")
def make_backend(label_studio: LabelStudioServer, image_server: ImageServer, tmp_path_factory):
    """Factory: ``make_backend(name)`` starts one ``aesemo serve`` that may read Label Studio's
    export (LABEL_STUDIO_URL + the admin's legacy token); all are stopped at teardown."""
    started: list[BackendProcess] = []

    def make(name: str) -> BackendProcess:
        root = tmp_path_factory.mktemp(f"aesemo-{name}")
        env = backend_env(root / "data", label_studio.url, image_server.port,
                          LABEL_STUDIO_API_KEY=label_studio.token)
        backend = BackendProcess(name, root / "data", free_port(), env)
        started.append(backend)
        backend.start()
        print(f"\naesemo backend {name!r} healthy on {backend.url} after {backend.started_in_s:.1f} s")
        return backend

    yield make
    for backend in started:
        backend.stop()


@pytest.fixture
def show_logs_on_failure(request, label_studio: LabelStudioServer):
    """Collects backends; prints their log tails (and Label Studio's) if the test fails."""
    watched: list[BackendProcess] = []
    failed_before = request.session.testsfailed
    yield watched.append
    if request.session.testsfailed > failed_before:
        for backend in watched:
            print(backend.log_tail(80))
        print(label_studio.log_tail())


# ---------------------------------------------------------------------------------- tests


def test_consensus_of_three_annotators(label_studio: LabelStudioServer, image_server: ImageServer,
                                       annotators: list[Annotator], make_backend, show_logs_on_failure):
    ls = label_studio
    a, b, c = annotators
    t0 = time.monotonic()
    backend = make_backend("consensus")
    show_logs_on_failure(backend)
    pid, (t1, t2, t3, t4, t5, t6) = overlap_project(ls, image_server, "aesemo e2e: consensus")
    ml = ls.connect_ml_backend(pid, backend.url, title="aesemo")
    assert ml["state"] == "CO", ml
    assert [w["url"] for w in ls.webhooks(pid)] == [backend.url + "/webhook"]
    log_start = len(backend.log_text())

    # task 1: all three agree
    for who in (a, b, c):
        who.annotate(t1, "high", "awe")
    # task 2: 2-vs-1 on aesthetic, three different emotions (a three-way tie: disputed)
    a.annotate(t2, "low", "awe")
    b.annotate(t2, "low", "fear")
    c.annotate(t2, "high", "sadness")
    # task 3: only two annotators so far
    a.annotate(t3, "low", "fear")
    b.annotate(t3, "low", "fear")
    # task 4: b first sides with c, then changes the vote, which flips the majority
    a.annotate(t4, "high", "amusement")
    b4 = b.annotate(t4, "low", "contentment")
    c.annotate(t4, "low", "contentment")
    flipped_before = wait_until(lambda: tasks_in_state(backend, pid, "agreed"),
                                lambda ts: any(t["task"] == t4 for t in ts))
    before = {t["task"]: t for t in flipped_before}
    assert before[t4]["aesthetic"]["label"] == "low" and before[t4]["emotion"]["label"] == "contentment", before
    updated = b.update(b4["id"], "high", "amusement")
    assert updated["id"] == b4["id"] and updated["result"][0]["value"]["choices"] == ["high"], updated
    # task 5: three votes, then one is deleted (two left: waiting)
    a.annotate(t5, "high", "excitement")
    b.annotate(t5, "high", "excitement")
    c5 = c.annotate(t5, "low", "anger")
    c.delete(c5["id"])
    assert [x["id"] for x in ls.annotations(t5)] and c5["id"] not in [x["id"] for x in ls.annotations(t5)]
    # task 6: one skip and two agreeing votes (a skip is no vote: waiting)
    skipped = a.skip(t6)
    assert skipped["was_cancelled"] is True, skipped
    b.annotate(t6, "low", "sadness")
    c.annotate(t6, "low", "sadness")
    stream_s = time.monotonic() - t0

    expected_states = {"aesthetic": states(agreed=3, waiting=3), "emotion": states(agreed=2, disputed=1, waiting=3)}
    summary = wait_until(lambda: consensus(backend, pid),
                         lambda s: {d: s[d]["tasks"] for d in expected_states} == expected_states)
    # every event Label Studio sent was taken (it ignores a failed webhook, so check here)
    statuses = webhook_statuses(backend, log_start)
    assert set(statuses) == {"200"}, statuses
    # 17 creates (the skip included), 1 update, 1 delete
    assert sum(statuses.values()) >= 19, statuses

    assert summary["project"] == str(pid)
    assert summary["policy"]["min_annotators"] == MIN_ANNOTATORS, summary["policy"]
    assert summary["aesthetic"]["tasks"] == expected_states["aesthetic"], summary
    assert summary["emotion"]["tasks"] == expected_states["emotion"], summary
    # agreed: t1 high/awe, t2 low, t4 high/amusement (after the flip)
    assert summary["aesthetic"]["labels"] == {"high": 2, "low": 1}, summary["aesthetic"]
    emotion_labels = dict.fromkeys(("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness"), 0)
    assert summary["emotion"]["labels"] == {**emotion_labels, "awe": 1, "amusement": 1}, summary["emotion"]
    # per annotator, over the agreed tasks: c was outvoted on t2 and t4 (aesthetic) and t4 (emotion)
    aesthetic_people = summary["aesthetic"]["annotators"]
    emotion_people = summary["emotion"]["annotators"]
    assert set(aesthetic_people) == set(emotion_people) == {str(a.id), str(b.id), str(c.id)}, summary
    # each annotator by name: the email Label Studio's users API lists (signup sets no first name)
    assert aesthetic_people[str(a.id)] == {"votes_on_agreed_tasks": 3, "agreement": 1.0, "name": a.email}
    assert aesthetic_people[str(b.id)] == {"votes_on_agreed_tasks": 3, "agreement": 1.0, "name": b.email}
    assert aesthetic_people[str(c.id)]["votes_on_agreed_tasks"] == 3
    assert aesthetic_people[str(c.id)]["agreement"] == pytest.approx(1 / 3)
    assert emotion_people[str(a.id)] == {"votes_on_agreed_tasks": 2, "agreement": 1.0, "name": a.email}
    assert emotion_people[str(b.id)] == {"votes_on_agreed_tasks": 2, "agreement": 1.0, "name": b.email}
    assert emotion_people[str(c.id)] == {"votes_on_agreed_tasks": 2, "agreement": 0.5, "name": c.email}
    for dimension in ("aesthetic", "emotion"):
        alpha = summary[dimension]["krippendorff_alpha"]
        assert alpha is not None and -1.0 <= alpha <= 1.0, summary[dimension]

    # exactly the disputed task, with its votes
    disputed = tasks_in_state(backend, pid, "disputed")
    assert [t["task"] for t in disputed] == [t2], disputed
    d2 = disputed[0]
    assert d2["emotion"]["state"] == "disputed" and d2["emotion"]["label"] is None, d2
    assert d2["emotion"]["votes"] == {str(a.id): "awe", str(b.id): "fear", str(c.id): "sadness"}, d2
    assert d2["emotion"]["soft"] == pytest.approx({"awe": 1 / 3, "fear": 1 / 3, "sadness": 1 / 3}), d2
    assert d2["aesthetic"]["state"] == "agreed" and d2["aesthetic"]["label"] == "low", d2
    assert d2["aesthetic"]["votes"] == {str(a.id): "low", str(b.id): "low", str(c.id): "high"}, d2
    assert d2["annotators"] == {str(who.id): who.email for who in (a, b, c)}, d2

    # the waiting tasks, with the votes that count: no deleted annotation, no skip
    waiting = {t["task"]: t for t in tasks_in_state(backend, pid, "waiting")}
    assert sorted(waiting) == [t3, t5, t6], waiting
    assert waiting[t3]["emotion"]["votes"] == {str(a.id): "fear", str(b.id): "fear"}, waiting[t3]
    assert waiting[t5]["aesthetic"]["votes"] == {str(a.id): "high", str(b.id): "high"}, waiting[t5]
    assert waiting[t6]["aesthetic"]["votes"] == {str(b.id): "low", str(c.id): "low"}, waiting[t6]
    for t in (t3, t5, t6):
        assert waiting[t]["aesthetic"]["state"] == waiting[t]["emotion"]["state"] == "waiting", waiting[t]

    # the flipped task is agreed the other way now, with b's updated vote
    agreed = {t["task"]: t for t in tasks_in_state(backend, pid, "agreed")}
    assert sorted(agreed) == [t1, t2, t4], agreed
    assert agreed[t4]["aesthetic"]["label"] == "high" and agreed[t4]["emotion"]["label"] == "amusement", agreed[t4]
    assert agreed[t4]["aesthetic"]["votes"] == {str(a.id): "high", str(b.id): "high", str(c.id): "low"}
    assert agreed[t1]["emotion"]["label"] == "awe" and agreed[t1]["emotion"]["agreement"] == 1.0
    # the webhooks left the backend with exactly what Label Studio holds: a resync from the
    # export finds nothing to add, change or remove, and the summary stays as it was
    r = backend.post(f"/projects/{pid}/resync", timeout=120)
    assert r.status_code == 200, r.text
    synced = r.json()
    assert (synced["added"], synced["changed"], synced["removed"]) == (0, 0, 0), synced
    assert synced["votes"] == 16 and synced["tasks"] == 6 and synced["problems"] == [], synced
    assert consensus(backend, pid) == summary
    print(f"\nconsensus: {sum(statuses.values())} webhooks, annotation stream {stream_s:.1f} s, "
          f"test {time.monotonic() - t0:.1f} s")


def test_resync_after_backend_was_down(label_studio: LabelStudioServer, image_server: ImageServer,
                                       annotators: list[Annotator], make_backend, show_logs_on_failure, tmp_path):
    from backend.votes.consensus import Policy, compute
    from backend.labelstudio.label_config import parse_label_config
    from backend.votes.resync import votes_from_export

    ls = label_studio
    a, b, c = annotators
    t0 = time.monotonic()
    backend = make_backend("resync")
    show_logs_on_failure(backend)
    pid, (t1, t2, t3, t4, t5, t6) = overlap_project(ls, image_server, "aesemo e2e: resync")
    ls.connect_ml_backend(pid, backend.url, title="aesemo")

    stream = [  # (annotator, task, aesthetic, emotion); None = a skip
        (a, t1, "high", "awe"), (b, t1, "high", "awe"), (c, t1, "high", "awe"),
        (a, t2, "low", "fear"), (b, t2, "low", "fear"),
        (a, t3, "high", "contentment"),
        (a, t4, "low", "sadness"),
        # ---- the backend goes down here
        (c, t2, "low", "anger"),
        (b, t3, "high", "contentment"), (c, t3, "low", "contentment"),
        (b, t4, "high", "excitement"), (c, t4, "high", "excitement"),
        (a, t5, "low", "disgust"), (b, t5, "low", "disgust"),
        (a, t6, None, None),
    ]
    half = 7
    made: list[dict] = []
    for who, task, aesthetic, emotion in stream[:half]:
        made.append(who.annotate(task, aesthetic, emotion))
    up = wait_until(lambda: consensus(backend, pid), lambda s: s["aesthetic"]["tasks"]["agreed"] == 1)
    assert up["aesthetic"]["tasks"] == states(agreed=1, waiting=3), up
    assert set(webhook_statuses(backend)) == {"200"}, webhook_statuses(backend)

    t_stop = time.monotonic()
    backend.stop()
    stop_s = time.monotonic() - t_stop
    # while it is down: the rest of the stream, a changed vote and a deleted one. Label Studio
    # still saves every annotation (the webhook fails silently).
    t_down = time.monotonic()
    down: list[dict] = []
    for who, task, aesthetic, emotion in stream[half:]:
        down.append(who.skip(task) if aesthetic is None else who.annotate(task, aesthetic, emotion))
    assert all(isinstance(x.get("id"), int) for x in down), down
    a.update(made[6]["id"], "high", "excitement")   # a on t4: low/sadness -> high/excitement
    c.delete(made[2]["id"])                          # c on t1: gone, t1 back to waiting
    down_s = time.monotonic() - t_down

    t_restart = time.monotonic()
    backend.start()  # same port, same data dir: the embedded Redis comes back with its votes
    restart_s = time.monotonic() - t_restart
    assert backend.port == int(ls.webhooks(pid)[0]["url"].rsplit(":", 1)[1].split("/")[0])
    stale = consensus(backend, pid)
    assert stale["aesthetic"]["tasks"] == states(agreed=1, waiting=3), stale   # what it saw before going down
    assert stale["aesthetic"]["annotators"].keys() == {str(a.id), str(b.id), str(c.id)}, stale

    t_resync = time.monotonic()
    r = backend.post(f"/projects/{pid}/resync", timeout=120)
    resync_s = time.monotonic() - t_resync
    assert r.status_code == 200, r.text
    counts = r.json()
    assert counts["added"] == len(stream) - half == len(down), counts
    assert counts["changed"] == 1, counts
    assert counts["removed"] == 1, counts
    assert counts["problems"] == [], counts
    assert counts["votes"] == len(stream) - 1, counts
    again = backend.post(f"/projects/{pid}/resync", timeout=120).json()
    assert (again["added"], again["changed"], again["removed"]) == (0, 0, 0), again
    synced = consensus(backend, pid)
    # t1 lost a vote (waiting), t5 has two, t6 only a skip (no votes): known from the export
    assert synced["aesthetic"]["tasks"] == states(agreed=3, waiting=2, no_votes=1), synced
    assert synced["emotion"]["tasks"] == states(agreed=3, waiting=2, no_votes=1), synced
    assert synced["aesthetic"]["labels"] == {"high": 2, "low": 1}, synced

    # the training set, independently, from Label Studio's export (admin token)
    export = ls.export(pid)
    assert sum(len(t.get("annotations") or []) for t in export) == len(stream) - 1
    expected = majority_training_set(export)
    # t1 lost c's vote and t5 has two (waiting); t6 has a skip and two missing votes
    designed = {t2: ("low", "fear"), t3: ("high", "contentment"), t4: ("high", "excitement")}
    assert {t: (top(row["aesthetic"]), top(row["emotion"])) for t, row in expected.items()} == designed, expected
    # and the same through the backend's own code path (compute + votes_from_export)
    labels = parse_label_config(LABEL_CONFIG)
    votes, images, problems, _ = votes_from_export(export, labels)
    assert problems == []
    by_backend = compute(votes, {"aesthetic": labels.aesthetic_classes, "emotion": labels.emotion_classes}, Policy())
    agreed_by_backend = {t for d in by_backend for t, c in by_backend[d].items() if c.state == "agreed"}
    assert agreed_by_backend == set(expected), (agreed_by_backend, expected)

    t_snap = time.monotonic()
    r = backend.post(f"/projects/{pid}/snapshot", timeout=120)
    snapshot_s = time.monotonic() - t_snap
    assert r.status_code == 200, r.text
    snap = r.json()
    assert snap["resync"] is not None and (snap["resync"]["added"], snap["resync"]["changed"],
                                           snap["resync"]["removed"]) == (0, 0, 0), snap
    assert snap["rows"] == len(expected), snap
    lines = [json.loads(line) for line in Path(snap["path"]).read_text().splitlines()]
    header, rows = lines[0], lines[1:]
    assert header["project"] == str(pid), header
    assert header["classes"] == {"aesthetic": list(labels.aesthetic_classes),
                                 "emotion": list(labels.emotion_classes)}, header
    assert [row["task"] for row in rows] == sorted(expected), rows
    for row in rows:
        want = expected[row["task"]]
        assert row["image"] == want["image"] == images[row["task"]], row
        for dimension in ("aesthetic", "emotion"):
            if want[dimension] is None:
                assert row[dimension] is None, (row, want)
            else:
                assert row[dimension] == pytest.approx(want[dimension]), (row, want)
                c = by_backend[dimension][row["task"]]
                assert top(row[dimension]) == c.label, (row, c)
    print(f"\nresync: stop {stop_s:.1f} s, {len(down) + 2} calls while down {down_s:.1f} s, "
          f"restart {restart_s:.1f} s, resync {resync_s:.2f} s -> {counts}, snapshot {snapshot_s:.2f} s, "
          f"test {time.monotonic() - t0:.1f} s")
