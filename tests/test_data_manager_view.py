"""The calls that make Label Studio sort by our scores (backend/labelstudio/data_manager.py) and
the follower that makes them once per served version, against a stand-in that keeps Label
Studio 1.23.2's rules (ml/models.py MLBackend.save); tests/e2e/test_least_certain_first.py runs
them against the real one."""
from __future__ import annotations

from dataclasses import replace


from backend.core import keys
from backend.labelstudio.data_manager import (SCORE_COLUMN, VIEW_TITLE, ensure_least_certain_view,
                                              follow_served_version)
from backend.labelstudio.follow import VersionFollower
from backend.labelstudio.projects import ProjectContext


class StandIn:
    """Project 7 with one ML backend titled "aesemo" whose last /setup answered `served`."""

    def __init__(self, served="v0002-x", project_version="aesemo", stored=("v0001-x",)):
        self.backends = [{"id": 3, "title": "aesemo", "model_version": served, "url": "http://aesemo:9090",
                          "auth_method": "NONE"}]
        self.project = {"id": 7, "model_version": project_version}
        self.stored = list(stored)
        self.views: list[dict] = []
        self.calls: list[tuple] = []

    def __call__(self, method, path, params=None, json=None):
        self.calls.append((method, path))
        if (method, path) == ("GET", "api/ml/"):
            return [dict(b) for b in self.backends]
        if method == "PATCH" and path == "api/ml/3":
            backend = self.backends[0]
            # MLBackendSerializer.validate checks the backend again: it needs these
            assert json["url"] == backend["url"] and json["project"] == 7, json
            if backend["auth_method"] == "BASIC_AUTH":
                assert (json["basic_auth_user"], json["basic_auth_pass"]) == ("robot", "pw"), json
            if self.project["model_version"] == backend["title"]:  # MLBackend.save
                self.project["model_version"] = json["title"]
            backend["title"] = json["title"]
            return dict(backend)
        if (method, path) == ("GET", "api/projects/7"):
            return dict(self.project)
        if (method, path) == ("PATCH", "api/projects/7"):
            self.project.update(json)
            return dict(self.project)
        if (method, path) == ("GET", "api/projects/7/model-versions/"):
            return dict.fromkeys(self.stored, 1)
        if (method, path) == ("GET", "api/dm/views/"):
            return list(self.views)
        if (method, path) == ("POST", "api/dm/views/"):
            self.views.append({"id": len(self.views) + 1, "project": json["project"], "data": json["data"]})
            return self.views[-1]
        raise AssertionError(f"unexpected call {method} {path}")


def test_backend_titled_with_the_served_version_and_project_follows():
    ls = StandIn()
    assert follow_served_version(ls, 7, "v0002-x")
    assert ls.backends[0]["title"] == "v0002-x" and ls.project["model_version"] == "v0002-x"


def test_basic_auth_backend_retitled_with_our_credentials():
    ls = StandIn()
    ls.backends[0]["auth_method"] = "BASIC_AUTH"
    assert follow_served_version(ls, 7, "v0002-x", basic_auth=("robot", "pw"))
    assert ls.backends[0]["title"] == "v0002-x"


def test_empty_project_version_is_pointed_at_the_served_version():
    ls = StandIn(project_version="")
    assert follow_served_version(ls, 7, "v0002-x")
    assert ls.project["model_version"] == "v0002-x"


def test_a_stored_version_chosen_by_hand_is_kept():
    ls = StandIn(project_version="v0001-x")
    assert follow_served_version(ls, 7, "v0002-x") is False
    assert ls.project["model_version"] == "v0001-x" and ls.backends[0]["title"] == "v0002-x"


def test_nothing_to_do_until_label_studio_stored_a_backend_serving_the_version():
    ls = StandIn(served="v0001-x")
    assert follow_served_version(ls, 7, "v0002-x") is None
    assert ls.calls == [("GET", "api/ml/")]


def test_view_created_once_with_score_ascending_and_no_filters():
    ls = StandIn()
    assert ensure_least_certain_view(ls, 7)
    assert not ensure_least_certain_view(ls, 7)
    assert len(ls.views) == 1
    data = ls.views[0]["data"]
    assert data["title"] == VIEW_TITLE and data["ordering"] == [SCORE_COLUMN] == ["tasks:predictions_score"]
    assert data["filters"] == {"conjunction": "and", "items": []}


def follower(redis_client, ls, settings):
    return VersionFollower(settings, redis_client, make_api=lambda s, c: ls, delays_s=(0.0,))


def test_follower_syncs_once_per_version(redis_client, settings):
    ls = StandIn()
    sync = follower(redis_client, ls, settings)
    context = ProjectContext("7", None, "http://127.0.0.1:1", "token")
    sync.on_setup(context, "v0002-x").join(10)
    assert redis_client.get(keys.ls_followed("7")) == "v0002-x"
    assert ls.project["model_version"] == "v0002-x" and len(ls.views) == 1
    assert sync.on_setup(context, "v0002-x") is None


def test_follower_tries_again_on_a_later_setup_after_a_failure(redis_client, settings):
    ls = StandIn(served="v0001-x")
    sync = follower(redis_client, ls, settings)
    context = ProjectContext("7", None, "http://127.0.0.1:1", "token")
    sync.on_setup(context, "v0002-x").join(10)
    assert redis_client.get(keys.ls_followed("7")) is None
    ls.backends[0]["model_version"] = "v0002-x"
    sync.on_setup(context, "v0002-x").join(10)
    assert redis_client.get(keys.ls_followed("7")) == "v0002-x"


def test_a_hand_chosen_version_is_not_asked_about_again_before_the_recheck(redis_client, settings):
    ls = StandIn(project_version="v0001-x")
    sync = follower(redis_client, ls, settings)
    context = ProjectContext("7", None, "http://127.0.0.1:1", "token")
    sync.on_setup(context, "v0002-x").join(10)
    assert ls.project["model_version"] == "v0001-x"
    assert sync.on_setup(context, "v0002-x") is None


def test_one_sync_at_a_time(redis_client, settings):
    redis_client.set(keys.ls_follow_lock("7"), "v0002-x")
    sync = follower(redis_client, StandIn(), settings)
    assert sync.on_setup(ProjectContext("7"), "v0002-x") is None


def test_without_a_token_nothing_is_called(redis_client, settings):
    sync = VersionFollower(settings, redis_client, delays_s=(0.0,))
    sync.on_setup(ProjectContext("7", None, "http://127.0.0.1:1", None), "v0002-x").join(10)
    assert redis_client.get(keys.ls_followed("7")) is None
    assert redis_client.get(keys.ls_follow_lock("7")) is None


def test_followed_version_is_checked_again_after_the_recheck_time(redis_client, settings):
    ls = StandIn()
    sync = VersionFollower(replace(settings, ls_recheck_s=30), redis_client, make_api=lambda s, c: ls,
                           delays_s=(0.0,))
    sync.on_setup(ProjectContext("7", None, "http://127.0.0.1:1", "token"), "v0002-x").join(10)
    assert 0 < redis_client.ttl(keys.ls_followed("7")) <= 30


def test_recheck_zero_leaves_label_studio_alone(redis_client, settings):
    ls = StandIn()
    sync = VersionFollower(replace(settings, ls_recheck_s=0), redis_client, make_api=lambda s, c: ls)
    assert sync.on_setup(ProjectContext("7", None, "http://127.0.0.1:1", "token"), "v0002-x") is None
    assert ls.calls == []
