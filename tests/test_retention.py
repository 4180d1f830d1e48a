"""Retention (backend/serving/retention.py): AESEMO_KEEP_VERSIONS trained versions per project, the
current one, the registered base and pinned ones always kept; the others deleted from the data
directory and from the object store (a real S3 server, tests/s3_server.py), never while a process
is loading one. Pins through the admin's endpoints."""
from __future__ import annotations

from dataclasses import replace

import pytest

from backend.core import keys
from backend.core.errors import NotFound
from backend.serving.hotswap import HotSwap
from backend.serving.models import ModelCache
from backend.serving.registry import project_versions, register_base, set_current_version
from backend.serving.retention import apply_retention, kept_reasons, set_pinned
from backend.serving.version_cache import local_folder, local_version, version_lease
from backend.serving.version_store import version_store
from model.version import META_FILE

from training_project import service_client, setup_project, write_small_version

PROJECT = "8"
NAMES = [f"v{n:04d}-x" for n in range(1, 7)]


def write_versions(settings, publish: bool = False) -> None:
    for n, name in enumerate(NAMES, 1):
        write_small_version(local_folder(settings, PROJECT, name), seed=n)
        if publish:
            version_store(settings).publish(PROJECT, name, local_folder(settings, PROJECT, name))


def here(settings) -> list[str]:
    return sorted(p.parent.name for p in local_folder(settings, PROJECT, "x").parent.glob(f"*/{META_FILE}"))


def test_retention_keeps_the_newest_the_current_the_pinned_and_the_base(settings, redis_client):
    settings = replace(settings, keep_versions=2)
    write_versions(settings)
    set_current_version(redis_client, PROJECT, NAMES[0])
    set_pinned(redis_client, settings, PROJECT, NAMES[1], True)
    register_base(redis_client, local_folder(settings, PROJECT, NAMES[2]))
    reasons = kept_reasons(settings, redis_client, PROJECT, NAMES)
    assert reasons == {NAMES[0]: "current", NAMES[1]: "pinned", NAMES[2]: "base", NAMES[3]: None,
                       NAMES[4]: "newest 2", NAMES[5]: "newest 2"}
    assert apply_retention(settings, redis_client, PROJECT) == {"removed": [NAMES[3]], "busy": []}
    assert here(settings) == [n for n in NAMES if n != NAMES[3]]


def test_every_version_stays_without_the_setting(settings, redis_client):
    write_versions(settings)
    assert apply_retention(settings, redis_client, PROJECT)["removed"] == []
    assert set(kept_reasons(settings, redis_client, PROJECT, NAMES).values()) == {"every version is kept"}
    assert here(settings) == NAMES


def two_hosts(settings, url: str, tmp_path, keep_versions: int):
    """The settings of a worker that applies retention and a replica, each with its own data
    directory, sharing the store at `url`."""
    return (replace(settings, version_store=url, data_dir=tmp_path / "worker", keep_versions=keep_versions),
            replace(settings, version_store=url, data_dir=tmp_path / "replica"))


def test_retention_deletes_from_the_object_store_and_this_hosts_copy(settings, redis_client, s3, tmp_path):
    worker, replica = two_hosts(settings, f"s3://{s3.bucket}/keep", tmp_path, keep_versions=3)
    write_versions(worker, publish=True)
    set_current_version(redis_client, PROJECT, NAMES[0])
    assert apply_retention(worker, redis_client, PROJECT)["removed"] == NAMES[1:3]
    assert version_store(replica).names(PROJECT) == [NAMES[0], *NAMES[3:]]
    assert here(worker) == [NAMES[0], *NAMES[3:]]
    assert [v["version"] for v in project_versions(replica, PROJECT)[0]] == [NAMES[0], *NAMES[3:]]
    left = {o["Key"].split("/")[2] for o in s3.client().list_objects_v2(Bucket=s3.bucket, Prefix="keep/")["Contents"]}
    assert left == {NAMES[0], *NAMES[3:]}  # every file of a deleted version went, not just its manifest


def test_a_version_being_loaded_is_kept_until_its_load_ends(settings, redis_client, s3, tmp_path):
    worker, replica = two_hosts(settings, f"s3://{s3.bucket}/lease", tmp_path, keep_versions=4)
    write_versions(worker, publish=True)
    set_current_version(redis_client, PROJECT, NAMES[5])
    with version_lease(redis_client, PROJECT, NAMES[0]):  # a replica downloading and loading v0001
        local_version(replica, redis_client, PROJECT, NAMES[0])
        assert apply_retention(worker, redis_client, PROJECT) == {"removed": [NAMES[1]], "busy": [NAMES[0]]}
        assert NAMES[0] in version_store(worker).names(PROJECT)
    assert apply_retention(worker, redis_client, PROJECT) == {"removed": [NAMES[0]], "busy": []}


def test_a_load_that_starts_while_retention_deletes_treats_the_version_as_gone(settings, redis_client):
    write_versions(settings)
    redis_client.set(keys.version_deleting(PROJECT, NAMES[0]), "1")
    with pytest.raises(NotFound, match="being deleted"), version_lease(redis_client, PROJECT, NAMES[0]):
        pass
    swap = HotSwap(settings, redis_client, ModelCache(settings.max_image_pixels))
    assert not swap.swap_to(PROJECT, NAMES[0])
    assert swap.swap_to(PROJECT, NAMES[1])
    assert not redis_client.zcard(keys.version_loading(PROJECT, NAMES[1]))  # the lease ends with the load


def test_pins_through_the_admin_endpoints(tmp_path, redis_url, redis_client):
    env, settings, client = service_client(tmp_path / "data", redis_url, "127.0.0.1", AESEMO_KEEP_VERSIONS="1")
    setup_project(client, int(PROJECT))
    write_versions(settings)
    response = client.post(f"/projects/{PROJECT}/versions/{NAMES[1]}/pin")
    assert response.status_code == 200 and response.get_json() == {"project": PROJECT, "version": NAMES[1],
                                                                   "pinned": True}
    listing = {v["version"]: v for v in client.get(f"/projects/{PROJECT}/versions").get_json()["versions"]}
    assert listing[NAMES[1]]["pinned"] and listing[NAMES[1]]["kept"] == "pinned"
    assert listing[NAMES[5]]["kept"] == "newest 1" and listing[NAMES[2]]["kept"] is None
    page = client.get(f"/?project={PROJECT}").get_data(as_text=True)
    assert f"/projects/{PROJECT}/versions/{NAMES[1]}/unpin" in page and "kept: pinned" in page
    assert "deleted by the next training job" in page
    missing = client.post(f"/projects/{PROJECT}/versions/v0099-none/pin")
    assert missing.status_code == 404 and "v0099-none" in missing.get_json()["error"]
    assert client.post(f"/projects/{PROJECT}/versions/{NAMES[1]}/unpin").get_json()["pinned"] is False
    assert apply_retention(settings, redis_client, PROJECT)["removed"] == NAMES[:5]
