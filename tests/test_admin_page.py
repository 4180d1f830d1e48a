"""The admin page at `/` through Flask's test client, against the session's real redis-server:
what it shows for a project with votes, versions (with their report PNGs) and jobs; the report
files it serves (and the paths it refuses); authentication; and the page's small formatters.
The page in a real browser, with its buttons clicked, is in test_admin_browser.py."""
from __future__ import annotations

import copy
import html
import json
import re

import pytest
import redis

from backend.core import keys
from backend.http.admin_page import format_duration, format_number, progress_fraction
from backend.http.app import create_app
from backend.serving.registry import project_versions_dir, set_current_version

from training_project import (AESTHETIC, EMOTION, example, label_tasks, service_client, settings_for,
                              setup_project, write_reported_version)

PROJECT = 3
OLD, NEW = "v0001-20261101000000", "v0002-20261102000000"
LS_HOST = "http://127.0.0.1:9"


def write_version(settings, name: str, accuracy: float, created_at: str, **meta) -> None:
    write_reported_version(project_versions_dir(settings, str(PROJECT)) / name, accuracy, created_at,
                           parent_version="base-resnet18", snapshot_id="0123456789abcdef", **meta)


# a small-set job's version: the final network's seconds, and its cross-validation folds' before it
SMALL_SET_TRAINING = {"seconds": 44.2, "device": "cpu", "precision": "bf16 (measured bf16 97.7 vs fp32 165.7 ms/image)",
                      "crossval": {"epochs": 8, "seconds": 282.9}}


def disagree(client, task: int, first_annotation: int) -> None:
    """Three annotators who agree on the aesthetic class and split on the emotion."""
    template = example("webhook_ANNOTATION_CREATED.json")
    for i, (user, emotion) in enumerate(zip((2, 3, 4), EMOTION[:3])):
        body = copy.deepcopy(template)
        body["project"]["id"] = PROJECT
        body["annotation"].update(id=first_annotation + i, completed_by=user, task=task, project=PROJECT)
        body["task"].update(id=task, project=PROJECT, data={"image": f"{LS_HOST}/img/{task}.png"})
        body["annotation"]["result"][0]["value"]["choices"] = [AESTHETIC[0]]
        body["annotation"]["result"][1]["value"]["choices"] = [emotion]
        assert client.post("/webhook", json=body).status_code == 200


@pytest.fixture(scope="module")
def admin(tmp_path_factory, redis_url):
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    raw.flushdb()
    env, settings, client = service_client(tmp_path_factory.mktemp("admin") / "data", redis_url, "127.0.0.1")
    empty_page = client.get("/").get_data(as_text=True)
    setup_project(client, PROJECT, hostname=LS_HOST)
    label_tasks(client, PROJECT, {t: f"{LS_HOST}/img/{t}.png" for t in range(1, 7)})
    disagree(client, task=50, first_annotation=1000)
    write_version(settings, OLD, 0.70, "2026-11-01T00:00:00+00:00")
    write_version(settings, NEW, 0.90, "2026-11-02T00:00:00+00:00", training=SMALL_SET_TRAINING)
    set_current_version(raw, str(PROJECT), NEW)
    yield {"client": client, "settings": settings, "env": env, "raw": raw, "empty_page": empty_page}
    raw.flushdb()


def page_text(admin, query: str = "") -> str:
    response = admin["client"].get("/" + query)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    return response.get_data(as_text=True)


def test_no_projects_yet_says_how_to_connect(admin):
    assert "No projects yet" in admin["empty_page"]
    assert "Connect Model" in admin["empty_page"]


def test_current_version_and_its_held_out_metrics(admin):
    text = page_text(admin)
    model = text[text.index('id="model"'):text.index('id="training"')]
    assert f'<strong id="current-version">{NEW}</strong>' in model
    assert "0.900" in model and "0.850" in model  # aesthetic accuracy and macro-F1 of NEW
    assert "0.700" not in model


def test_held_out_metrics_show_their_bootstrap_intervals(admin):
    from model.bootstrap import with_intervals
    from model.version import META_FILE
    meta_file = project_versions_dir(admin["settings"], str(PROJECT)) / NEW / META_FILE
    meta = json.loads(meta_file.read_text())
    metrics = with_intervals(meta["metrics"])
    metrics["aesthetic"]["n"] = 7
    meta_file.write_text(json.dumps({**meta, "metrics": metrics}))
    low, high = json.loads(meta_file.read_text())["metrics"]["aesthetic"]["ci"]["accuracy"]
    model = page_text(admin)
    model = html.unescape(model[model.index('id="model"'):model.index('id="training"')])
    assert f"({format_number(low)}–{format_number(high)})" in model
    assert "95% bootstrap interval" in model
    # and how many held-out tasks they rest on
    assert "<td>7</td>" in model and "labelled held-out tasks the scores rest on" in model


def test_version_history_with_reports_and_promote_or_roll_back_buttons(admin):
    text = page_text(admin)
    versions = text[text.index('id="versions"'):text.index('id="consensus"')]
    assert versions.index(NEW) < versions.index(OLD)  # newest first
    new_row = versions[versions.index(f'data-version="{NEW}"'):versions.index(f'data-version="{OLD}"')]
    old_row = versions[versions.index(f'data-version="{OLD}"'):]
    assert "current" in new_row and 'class="promote"' not in new_row  # the current one has nothing to promote
    assert f'data-url="/projects/{PROJECT}/versions/{NEW}/pin"' in new_row and "kept: current" in new_row
    assert f'data-url="/projects/{PROJECT}/versions/{OLD}/promote"' in old_row
    assert "Roll back to this" in old_row  # older than the current one
    for task in ("aesthetic", "emotion"):
        assert f'src="/projects/{PROJECT}/versions/{OLD}/report/confusion_{task}.png"' in old_row
    assert "0.700" in old_row


def test_a_versions_training_time_counts_its_cross_validation_and_names_its_precision(admin):
    text = page_text(admin)
    versions = text[text.index('id="versions"'):text.index('id="consensus"')]
    new_row = versions[versions.index(f'data-version="{NEW}"'):versions.index(f'data-version="{OLD}"')]
    assert "cpu · " in new_row and ">327 s</span> · bf16" in new_row   # 44.2 s final + 282.9 s folds


def test_consensus_summary_and_disputed_tasks_linked_to_label_studio(admin):
    text = html.unescape(page_text(admin))
    consensus = text[text.index('id="consensus"'):]
    emotion = consensus[consensus.index('id="consensus-emotion"'):consensus.index('id="disputed"')]
    assert re.search(r"<th>agreed</th><td>6</td>", emotion)
    assert re.search(r"<th>disputed</th><td>1</td>", emotion)
    assert "Krippendorff's α" in emotion
    for user in (2, 3, 4):
        assert f"user {user}" in emotion
    disputed = consensus[consensus.index('id="disputed"'):]
    assert "Disputed tasks (1)" in disputed
    assert f'href="{LS_HOST}/projects/{PROJECT}/data?task=50"' in disputed
    for emotion_vote in EMOTION[:3]:
        assert emotion_vote in disputed


def test_training_section_has_the_start_button(admin):
    text = page_text(admin)
    assert f'data-url="/projects/{PROJECT}/train"' in text
    assert "No job is running or queued." in text


def test_unknown_project_in_the_query_falls_back_with_a_notice(admin):
    text = page_text(admin, "?project=999")
    assert "has not heard of that project" in text
    assert f'<strong id="current-version">{NEW}</strong>' in text


@pytest.mark.parametrize("stored", ["javascript:alert(document.domain)//", "JavaScript:alert(1)",
                                    " javascript:alert(1)", "data:text/html,<script>alert(1)</script>",
                                    'http://x.example/"><script>alert(1)</script>'])
def test_a_stored_hostname_never_becomes_a_script_link(admin, stored):
    """/setup refuses such hostnames now; one stored before that check, or written to Redis
    directly, must not become a javascript: link either (nor break out of the attribute)."""
    key = keys.setup(PROJECT)
    admin["raw"].hset(key, "hostname", stored)
    try:
        text = page_text(admin)
    finally:
        admin["raw"].hset(key, "hostname", LS_HOST)
    links = re.findall(r'(?:href|src)\s*=\s*"([^"]*)"', text)
    assert links and all(link.startswith(("/", "http://", "https://", "data:,")) for link in links), links
    assert "<script>alert" not in text and "javascript:" not in text.lower()
    assert "Disputed tasks (1)" in text  # the rest of the page is there


def test_bad_project_ids_in_redis_are_skipped_and_named(admin):
    """Ids that /setup refuses now, but that an older version stored (or someone wrote to Redis):
    the page renders, lists the good projects, and names what it skipped."""
    bad = ["9" * 5000 + ".1", "abc", "007", "-4", "99999999999999999999"]
    admin["raw"].sadd(keys.PROJECTS, *bad)
    try:
        response = admin["client"].get("/")
    finally:
        admin["raw"].srem(keys.PROJECTS, *bad)
    assert response.status_code == 200
    text = html.unescape(response.get_data(as_text=True))
    assert f"project {PROJECT}" in text and "not project ids, skipped" in text
    assert "'abc'" in text and "'007'" in text and "..." in text
    assert "9" * 5000 not in text


def test_report_png_is_served_and_other_paths_are_404(admin):
    client = admin["client"]
    response = client.get(f"/projects/{PROJECT}/versions/{OLD}/report/confusion_aesthetic.png")
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.data[:8] == b"\x89PNG\r\n\x1a\n"
    for path in (f"/projects/{PROJECT}/versions/{OLD}/report/nothing.png",
                 f"/projects/{PROJECT}/versions/v9999/report/confusion_aesthetic.png",
                 f"/projects/{PROJECT}/versions/{OLD}/report/..%2Fmodel.json",
                 f"/projects/{PROJECT}/versions/..%2F..%2F/report/confusion_aesthetic.png",
                 f"/projects/{PROJECT}/versions/.{OLD}/report/confusion_aesthetic.png"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "error" in response.get_json()


def test_static_files_are_local(admin):
    text = page_text(admin)
    sources = re.findall(r'(?:src|href)="([^"]+)"', text)
    external = [s for s in sources if s.startswith(("http:", "https:", "//")) and not s.startswith(LS_HOST)]
    assert external == []  # no CDN: many deployments have no internet
    for asset in ("/static/admin.js", "/static/admin.css"):
        assert asset in sources
        assert admin["client"].get(asset).status_code == 200


def test_health_is_json_and_the_page_is_html(admin):
    response = admin["client"].get("/health")
    assert response.get_json()["status"] == "UP"
    assert admin["client"].get("/").mimetype == "text/html"


def test_the_page_and_its_files_need_basic_auth_when_it_is_on(admin):
    settings = settings_for({**admin["env"], "BASIC_AUTH_USER": "admin", "BASIC_AUTH_PASS": "s3cret"})
    client = create_app(settings).test_client()
    for path in ("/", "/static/admin.js", f"/projects/{PROJECT}/versions/{OLD}/report/confusion_aesthetic.png"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, auth=("admin", "wrong")).status_code == 401, path
        assert client.get(path, auth=("admin", "s3cret")).status_code == 200, path


def test_a_section_that_fails_shows_why_and_the_rest_still_renders(admin, monkeypatch):
    from backend.core.errors import InvalidInput
    from backend.services.consensus import ConsensusService

    def broken(self, project, state):
        raise InvalidInput("consensus is broken for this test")
    monkeypatch.setattr(ConsensusService, "overview", broken)
    text = page_text(admin)
    assert "consensus is broken for this test" in text
    assert f'<strong id="current-version">{NEW}</strong>' in text


@pytest.mark.parametrize("progress, status, expected", [
    ({}, "queued", None),
    ({"state": "images"}, "started", None),
    ({"epoch": 1, "epochs": 2, "step": 5, "steps": 10}, "started", 0.25),
    ({"epoch": 2, "epochs": 2, "step": 10, "steps": 10}, "started", 1.0),
    ({"epoch": 1, "epochs": 2, "step": 1, "steps": 10}, "finished", 1.0),
    ({"state": "images", "done": 3, "total": 12, "unit": "images"}, "started", 0.25),
    # after training, a stage without a count of its own shows no bar, not the training's
    ({"state": "runtime", "epoch": 2, "epochs": 5, "step": 10, "steps": 10}, "started", None),
])
def test_progress_fraction(progress, status, expected):
    assert progress_fraction({"status": status, "progress": progress}) == expected


def test_formatters():
    assert format_duration(5) == "5 s"
    assert format_duration(125) == "2 min 05 s"
    assert format_duration(3 * 3600 + 120) == "3 h 02 min"
    assert format_number(None) == "–"
    assert format_number(0.12345) == "0.123"
    assert format_number(float("nan")) == "nan"
    assert format_number(7) == "7"


def test_queued_job_card_then_the_failed_job_with_its_reason(admin, tmp_path):
    """A job asked for on the page's API shows as a card (queued, cancel button); run by a real
    worker, it fails (the images' host refuses connections) and the page says why."""
    from training_project import run_burst_worker
    client = admin["client"]
    answer = client.post(f"/projects/{PROJECT}/train", json={})
    assert answer.status_code == 202, answer.get_json()
    job_id = answer.get_json()["job_id"]
    text = page_text(admin)
    card = text[text.index(f'data-job-id="{job_id}"'):]
    assert 'data-status="queued"' in card[:200]
    assert f'data-url="/projects/{PROJECT}/jobs/{job_id}/cancel"' in card
    assert f"{job_id}" in text.split('id="active-jobs"')[1]

    result = run_burst_worker(admin["env"], tmp_path / "worker.log")
    assert result.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
    text = html.unescape(page_text(admin))
    assert "No job is running or queued." in text
    recent = text[text.index('id="recent-jobs"'):text.index('id="versions"')]
    row = recent[recent.index(job_id) - 200:]
    assert 'class="job-failed"' in row
    assert "images could not be fetched" in row
    # the time each stage took, the failed one named
    assert 'data-stage="snapshot"' in row and 'data-stage="images"' in row and "(failed in images)" in row


def test_cross_site_posts_are_refused_and_same_site_ones_pass(admin):
    """A page elsewhere must not promote versions through the admin's browser; Label Studio and
    curl send no Origin header and pass."""
    client = admin["client"]
    promote = f"/projects/{PROJECT}/versions/{NEW}/promote"
    for origin in ("http://evil.example", "null", "http://localhost.evil.example"):
        response = client.post(promote, headers={"Origin": origin})
        assert response.status_code == 403, origin
        assert "cross-site request" in response.get_json()["error"]
    assert client.post(promote, headers={"Origin": "http://localhost"}).status_code == 200  # the test client's host
    assert client.post(promote).status_code == 200
    assert client.get("/", headers={"Origin": "http://evil.example"}).status_code == 200  # reading is harmless


def test_cross_site_webhook_is_refused_too(admin):
    """The Origin check holds on Label Studio's /webhook too."""
    body = copy.deepcopy(example("webhook_ANNOTATION_CREATED.json"))
    body["project"]["id"] = PROJECT
    body["annotation"].update(id=5000, completed_by=9, task=60, project=PROJECT)
    response = admin["client"].post("/webhook", json=body, headers={"Origin": "http://evil.example"})
    assert response.status_code == 403
    assert admin["raw"].hget(keys.votes(PROJECT), "5000") is None


def test_redis_down_gives_a_page_that_says_so(admin, tmp_path):
    """A real client to a Redis socket where no server listens: 503 and the reason, not a 500."""
    env = {**admin["env"], "REDIS_URL": f"unix://{tmp_path}/no-redis.sock"}
    client = create_app(settings_for(env)).test_client()
    response = client.get("/")
    assert response.status_code == 503
    assert "Redis is unavailable" in response.get_data(as_text=True)


def test_behind_a_proxy_sub_path_every_link_keeps_the_prefix(admin):
    """A proxy serving the backend under /aesemo sets SCRIPT_NAME: the page's links, the
    script's polling URL and the buttons' URLs must all carry it."""
    response = admin["client"].get("/", environ_overrides={"SCRIPT_NAME": "/aesemo"})
    text = response.get_data(as_text=True)
    assert f'data-jobs-url="/aesemo/projects/{PROJECT}/jobs"' in text
    assert 'src="/aesemo/static/admin.js"' in text
    assert f'data-url="/aesemo/projects/{PROJECT}/train"' in text
    local = list(re.findall(r'(?:src|href|data-url)="(/[^"]*)"', text))
    assert local and all(u.startswith("/aesemo/") for u in local), [u for u in local if not u.startswith("/aesemo/")]


# ----- host names (DNS rebinding) and the headers browsers act on --------------------------------

def app_listing(admin, hosts: str):
    return create_app(settings_for({**admin["env"], "AESEMO_ALLOWED_HOSTS": hosts})).test_client()


def admin_answers(client, host: str) -> list[int]:
    """The statuses of the admin page and a promotion under `host`, sent as a rebound page would:
    its Origin names that host too, so the cross-site check lets it through."""
    headers = {"Host": host, "Origin": f"http://{host}"}
    return [client.get("/", headers=headers).status_code,
            client.post(f"/projects/{PROJECT}/versions/{NEW}/promote", headers=headers).status_code]


@pytest.mark.parametrize("host", ["localhost", "localhost:9090", "LOCALHOST.:9090", "127.0.0.1:9090", "127.8.9.10",
                                  "[::1]:9090", "[::1]", "[::ffff:127.0.0.1]:9090"])
def test_loopback_hosts_reach_the_admin(admin, host):
    assert admin_answers(admin["client"], host) == [200, 200]


@pytest.mark.parametrize("host", ["evil.example:9090", "evil.example", "localhost.evil.example", "192.168.1.5:9090",
                                  "[::2]:9090", "[::1", "::1", "127.0.0.1.evil.example"])
def test_other_hosts_are_refused_on_the_admin_page_and_its_endpoints(admin, host):
    client = admin["client"]
    assert admin_answers(client, host) == [403, 403]
    refused = client.get(f"/projects/{PROJECT}/jobs", headers={"Host": host})
    assert refused.status_code == 403 and refused.mimetype == "application/json"
    error = refused.get_json()["error"]
    assert host in error and "AESEMO_ALLOWED_HOSTS" in error
    for path in ("/metrics", f"/projects/{PROJECT}/versions/{OLD}/report/confusion_aesthetic.png"):
        assert client.get(path, headers={"Host": host}).status_code == 403, path


def test_listed_hosts_reach_the_admin_and_others_still_do_not(admin):
    client = app_listing(admin, "labels.example.org, backend")
    for host in ("labels.example.org", "Labels.Example.Org:8443", "backend:9090", "localhost:9090"):
        assert admin_answers(client, host) == [200, 200], host
    assert admin_answers(client, "evil.example:9090") == [403, 403]
    assert admin_answers(app_listing(admin, "*"), "evil.example:9090") == [200, 200]


def test_label_studio_endpoints_answer_any_host(admin):
    client, host = admin["client"], "evil.example:9090"
    assert client.get("/health", headers={"Host": host}).status_code == 200
    assert NEW in client.get("/versions", headers={"Host": host}).get_json()["versions"]  # Label Studio lists them
    body = copy.deepcopy(example("webhook_ANNOTATION_CREATED.json"))
    body["project"]["id"] = PROJECT
    body["annotation"].update(id=5100, completed_by=9, task=61, project=PROJECT)
    assert client.post("/webhook", json=body, headers={"Host": host}).status_code == 200
    chunked = client.post("/webhook", data=json.dumps(body), content_type="application/json",
                          headers={"Host": host, "Transfer-Encoding": "chunked"},
                          environ_overrides={"wsgi.input_terminated": True})
    assert chunked.status_code == 200                                                          # the Flask route
    setup = {**example("setup.json"), "project": f"{PROJECT}.1795782039", "hostname": LS_HOST}
    assert client.post("/setup", json=setup, headers={"Host": host}).status_code == 200
    predict = client.post("/predict", json={"tasks": []}, headers={"Host": host})
    assert predict.status_code != 403, predict.get_json()
    train = client.post("/train", json={}, headers={"Host": host})
    assert train.status_code != 403, train.get_json()


def test_no_page_elsewhere_may_frame_the_admin_page_or_sniff_an_answer(admin):
    client = admin["client"]
    page = client.get("/")
    policy = page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
    for response in (page, client.get("/health"), client.get("/no/such/path"), client.get("/static/admin.js"),
                     client.post("/webhook", json={"action": "NO_SUCH_ACTION"})):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"


def test_report_images_are_cached_by_the_admins_browser_only(admin):
    response = admin["client"].get(f"/projects/{PROJECT}/versions/{OLD}/report/confusion_aesthetic.png")
    assert response.status_code == 200
    cache = response.cache_control
    assert cache.private and not cache.public and cache.max_age == 3600, response.headers["Cache-Control"]
