"""Annotators by name: the consensus JSON, the admin page and the CLI's data name each annotator
from Label Studio's users API (a loopback fake of `/api/users/`), cached in the session's real
Redis; "user N" when Label Studio cannot say, never an error; hostile names stay text."""
from __future__ import annotations

import html
import json
from dataclasses import replace

import pytest

from backend.core import keys
from backend.http.app import create_app
from backend.labelstudio.users import display_name

from json_server import JsonHandler, LoopbackServer
from training_project import label_tasks, setup_project

PROJECT = 12
TOKEN = "operator-legacy-token"
HOSTILE = "<script>alert(1)</script>"
USERS = [
    {"id": 2, "username": "ann", "email": "ann@example.com", "first_name": "Ann", "last_name": "Lee"},
    {"id": 3, "username": "bob", "email": "bob@example.com", "first_name": "", "last_name": ""},
    {"id": 4, "username": "eve", "email": "eve@example.com", "first_name": HOSTILE, "last_name": ""},
]


class FakeUsersApi:
    """A loopback Label Studio that answers only `GET /api/users/`, recording each such request's
    Authorization header (other calls, such as the version follower's after /setup, arrive from
    another thread at any time and are not counted); `status` other than 200 makes it fail."""

    def __init__(self):
        self.requests: list[str | None] = []
        self.status = 200
        fake = self

        class Handler(JsonHandler):
            def do_GET(self):
                users = self.path.split("?")[0] == "/api/users/"
                if users:
                    fake.requests.append(self.headers.get("Authorization"))
                ok = users and fake.status == 200
                self.answer(200 if ok else (fake.status if fake.status != 200 else 404),
                            USERS if ok else {"detail": "no"})

        self.server = LoopbackServer(Handler)
        self.url = self.server.url

    def close(self):
        self.server.close()


@pytest.fixture
def users_api():
    fake = FakeUsersApi()
    yield fake
    fake.close()


def labelled_client(settings):
    client = create_app(settings).test_client()
    setup_project(client, PROJECT, hostname=settings.label_studio_url or "http://127.0.0.1:9")
    label_tasks(client, PROJECT, {t: f"http://127.0.0.1:9/img/{t}.png" for t in range(1, 4)})
    return client


def test_consensus_json_names_each_annotator_and_keeps_the_id(settings, redis_client, users_api):
    client = labelled_client(replace(settings, label_studio_url=users_api.url, label_studio_api_key=TOKEN))
    summary = client.get(f"/projects/{PROJECT}/consensus").get_json()
    annotators = summary["emotion"]["annotators"]
    assert {u: a["name"] for u, a in annotators.items()} == {"2": "Ann Lee", "3": "bob@example.com", "4": HOSTILE}
    assert annotators["2"]["votes_on_agreed_tasks"] == 3
    tasks = client.get(f"/projects/{PROJECT}/consensus/tasks?state=agreed").get_json()["tasks"]
    assert tasks[0]["annotators"] == {"2": "Ann Lee", "3": "bob@example.com", "4": HOSTILE}
    assert set(tasks[0]["emotion"]["votes"]) == {"2", "3", "4"}
    # the operator's token went to LABEL_STUDIO_URL, once: the second read came from Redis
    assert users_api.requests == [f"Token {TOKEN}"]
    assert 0 < redis_client.ttl(keys.annotator_names(str(PROJECT))) <= 600


def test_admin_page_shows_names_escaped(settings, redis_client, users_api):
    client = labelled_client(replace(settings, label_studio_url=users_api.url, label_studio_api_key=TOKEN))
    page = client.get("/").get_data(as_text=True)
    consensus = page[page.index('id="consensus"'):]
    assert "Ann Lee" in consensus and "bob@example.com" in consensus
    assert HOSTILE not in page  # the name is text, never markup
    assert html.escape(HOSTILE, quote=False) in consensus or html.escape(HOSTILE) in consensus


def test_label_studio_down_gives_user_n_and_is_not_asked_again_at_once(settings, redis_client, users_api):
    users_api.status = 500
    client = labelled_client(replace(settings, label_studio_url=users_api.url, label_studio_api_key=TOKEN))
    summary = client.get(f"/projects/{PROJECT}/consensus").get_json()
    assert {u: a["name"] for u, a in summary["aesthetic"]["annotators"].items()} == {
        "2": "user 2", "3": "user 3", "4": "user 4"}
    asked = len(users_api.requests)
    assert asked >= 1
    page = client.get("/")
    assert page.status_code == 200 and "user 3" in page.get_data(as_text=True)
    assert len(users_api.requests) == asked  # within the retry window: no second wait on Label Studio


def test_no_label_studio_at_all_gives_user_n(settings, redis_client):
    client = labelled_client(settings)  # no LABEL_STUDIO_URL, /setup's hostname is an unused port
    summary = client.get(f"/projects/{PROJECT}/consensus").get_json()
    assert summary["emotion"]["annotators"]["2"]["name"] == "user 2"


def test_a_setup_hostname_on_loopback_is_refused_before_connecting(settings, redis_client, users_api):
    """/setup's hostname is no trusted host: the address guard keeps the names call off it."""
    client = create_app(settings).test_client()
    setup_project(client, PROJECT, hostname=users_api.url)
    label_tasks(client, PROJECT, {1: "http://127.0.0.1:9/img/1.png"})
    summary = client.get(f"/projects/{PROJECT}/consensus").get_json()
    assert summary["emotion"]["annotators"]["2"]["name"] == "user 2"
    assert users_api.requests == []


class _User:
    def __init__(self, **fields):
        self.__dict__.update(fields)


@pytest.mark.parametrize("fields, expected", [
    ({"first_name": "Ann", "last_name": "Lee", "email": "a@x"}, "Ann Lee"),
    ({"first_name": "", "last_name": "", "email": "a@x"}, "a@x"),
    ({"email": "", "username": "ann"}, "ann"),
    ({"first_name": "An\x1b[31mn\n", "email": "a@x"}, "An[31mn"),  # no terminal escapes reach the CLI
    ({"first_name": "x" * 200}, "x" * 80),
    ({"email": None, "username": None}, None),
])
def test_display_name(fields, expected):
    assert display_name(_User(**fields)) == expected


def test_cli_consensus_names_annotators(settings, redis_client, users_api, monkeypatch, capsys):
    from backend.cli import main
    labelled_client(replace(settings, label_studio_url=users_api.url, label_studio_api_key=TOKEN))
    for name, value in (("REDIS_URL", settings.redis_url), ("AESEMO_DATA_DIR", str(settings.data_dir)),
                        ("LABEL_STUDIO_URL", users_api.url), ("LABEL_STUDIO_API_KEY", TOKEN)):
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert main(["consensus", str(PROJECT)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["aesthetic"]["annotators"]["2"]["name"] == "Ann Lee"
    assert main(["consensus", str(PROJECT), "--state", "agreed"]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"][0]["annotators"]["3"] == "bob@example.com"
