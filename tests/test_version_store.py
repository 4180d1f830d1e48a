"""Versions in S3-compatible object storage (backend/serving/version_store.py) and each host's cache
of them (backend/serving/version_cache.py), against a real S3 server (SeaweedFS's `weed mini`,
tests/s3_server.py) and the session's real Redis. Two hosts are two data directories sharing the
bucket and Redis, nothing else."""
from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest

from backend.core.errors import Conflict, NotFound
from backend.core.settings import load_settings
from backend.serving.hotswap import HotSwap
from backend.serving.models import ModelCache
from backend.serving.registry import current_version_name, project_versions, promote_version
from backend.serving.version_cache import evict_over_bound, local_folder, local_version, version_lease
from backend.serving.version_store import MANIFEST, version_files, version_store
from model.errors import VersionError
from model.version import META_FILE, WEIGHTS_FILE, sha256_file

from training_project import flip_a_byte, write_reported_version, write_small_version

PROJECT = "5"


@pytest.fixture
def hosts(settings, s3, tmp_path):
    """Two hosts' settings: the same bucket and Redis, each its own data directory."""
    url = f"s3://{s3.bucket}/deploy"
    return (replace(settings, version_store=url, data_dir=tmp_path / "host-a"),
            replace(settings, version_store=url, data_dir=tmp_path / "host-b"))


def published(host, name: str, seed: int = 1, **meta) -> None:
    """A version written on `host` (as a training job would) and published to the store."""
    folder = local_folder(host, PROJECT, name)
    write_small_version(folder, seed=seed, **meta)
    version_store(host).publish(PROJECT, name, folder)


def test_a_version_published_on_one_host_downloads_whole_on_another(hosts, redis_client, s3):
    a, b = hosts
    write_reported_version(local_folder(a, PROJECT, "v0001-x"), 0.7, "2026-11-01T00:00:00Z")
    version_store(a).publish(PROJECT, "v0001-x", local_folder(a, PROJECT, "v0001-x"))
    keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket=s3.bucket, Prefix="deploy/")["Contents"]}
    assert f"deploy/{PROJECT}/v0001-x/{MANIFEST}" in keys and f"deploy/{PROJECT}/v0001-x/{WEIGHTS_FILE}" in keys
    manifest = json.loads(s3.client().get_object(Bucket=s3.bucket, Key=f"deploy/{PROJECT}/v0001-x/{MANIFEST}")
                          ["Body"].read())
    weights = local_folder(a, PROJECT, "v0001-x") / WEIGHTS_FILE
    assert manifest["files"][WEIGHTS_FILE]["sha256"] == manifest["meta"]["weights_sha256"] == sha256_file(weights)

    folder = local_version(b, redis_client, PROJECT, "v0001-x")
    assert folder == local_folder(b, PROJECT, "v0001-x")
    assert version_files(folder) == version_files(local_folder(a, PROJECT, "v0001-x"))
    assert sha256_file(folder / WEIGHTS_FILE) == sha256_file(weights)
    listed, skipped = project_versions(b, PROJECT)
    assert [v["version"] for v in listed] == ["v0001-x"] and not skipped
    assert listed[0]["metrics"]["aesthetic"]["accuracy"] == 0.7


def test_a_version_in_the_store_never_changes(hosts):
    a, b = hosts
    published(a, "v0001-x", seed=1)
    write_small_version(local_folder(b, PROJECT, "v0001-x"), seed=2)
    with pytest.raises(Conflict, match="already in the store"):
        version_store(b).publish(PROJECT, "v0001-x", local_folder(b, PROJECT, "v0001-x"))


def test_a_version_without_its_manifest_is_not_there_yet(hosts, s3, redis_client):
    a, b = hosts
    published(a, "v0001-x")
    # a publisher that died after some files: no manifest, so no version
    s3.client().put_object(Bucket=s3.bucket, Key=f"deploy/{PROJECT}/v0002-y/{WEIGHTS_FILE}", Body=b"half")
    assert version_store(b).names(PROJECT) == ["v0001-x"]
    with pytest.raises(NotFound):
        promote_version(redis_client, b, PROJECT, "v0002-y")


def test_a_file_changed_in_the_store_is_refused_and_leaves_nothing_behind(hosts, redis_client, s3):
    a, b = hosts
    published(a, "v0001-x")
    weights = local_folder(a, PROJECT, "v0001-x") / WEIGHTS_FILE
    flip_a_byte(weights)
    s3.client().upload_file(str(weights), s3.bucket, f"deploy/{PROJECT}/v0001-x/{WEIGHTS_FILE}")
    with pytest.raises(VersionError, match="does not match"):
        local_version(b, redis_client, PROJECT, "v0001-x")
    versions = local_folder(b, PROJECT, "v0001-x").parent
    assert not [p.name for p in versions.iterdir() if not p.name.endswith(".lock")]


def test_a_replica_promotes_and_serves_a_version_it_never_had(hosts, redis_client):
    a, b = hosts
    published(a, "v0001-x", seed=1)
    published(a, "v0002-y", seed=2)
    answer = promote_version(redis_client, b, PROJECT, "v0001-x")
    assert answer["current"] == "v0001-x" == current_version_name(redis_client, PROJECT)
    swap = HotSwap(b, redis_client, ModelCache(b.max_image_pixels))
    assert swap.swap_to(PROJECT, "v0002-y")
    assert swap.get(PROJECT).folder == local_folder(b, PROJECT, "v0002-y")
    assert (local_folder(b, PROJECT, "v0002-y") / META_FILE).is_file()


def test_the_cache_evicts_the_least_recently_used_versions_past_its_bound(hosts, redis_client):
    a, b = hosts
    for n, name in enumerate(("v0001-x", "v0002-y", "v0003-z"), 1):
        published(a, name, seed=n)
    size = sum(p.stat().st_size for p in local_folder(a, PROJECT, "v0001-x").rglob("*") if p.is_file())
    b = replace(b, version_cache_bytes=int(size * 2.5))
    local_version(b, redis_client, PROJECT, "v0001-x")
    local_version(b, redis_client, PROJECT, "v0002-y")
    # v0001 used again after v0002: v0002 is the least recently used when v0003 arrives
    stamp = local_folder(b, PROJECT, "v0002-y") / ".used"
    stamp.touch()
    os.utime(stamp, (1, 1))
    local_version(b, redis_client, PROJECT, "v0001-x")
    local_version(b, redis_client, PROJECT, "v0003-z")
    here = sorted(p.parent.name for p in local_folder(b, PROJECT, "x").parent.glob(f"*/{META_FILE}"))
    assert here == ["v0001-x", "v0003-z"]


def test_the_cache_never_evicts_a_version_being_loaded(hosts, redis_client):
    a, b = hosts
    published(a, "v0001-x")
    b = replace(b, version_cache_bytes=0)
    with version_lease(redis_client, PROJECT, "v0001-x"):
        local_version(b, redis_client, PROJECT, "v0001-x")
        assert evict_over_bound(b, redis_client) == []
    assert evict_over_bound(b, redis_client) == [f"{PROJECT}/v0001-x"]


def test_without_a_store_the_data_directory_holds_the_versions(settings, redis_client):
    write_small_version(local_folder(settings, PROJECT, "v0001-x"), seed=1)
    assert not version_store(settings).shared
    assert local_version(settings, redis_client, PROJECT, "v0001-x") == local_folder(settings, PROJECT, "v0001-x")
    assert [v["version"] for v in project_versions(settings, PROJECT)[0]] == ["v0001-x"]


@pytest.mark.parametrize("value", ["http://bucket/x", "s3://", "s3://Upper/x", "s3://a/x", "bucket"])
def test_a_store_address_that_is_not_an_s3_bucket_is_refused(monkeypatch, value):
    monkeypatch.setenv("AESEMO_VERSION_STORE", value)
    with pytest.raises(ValueError, match="AESEMO_VERSION_STORE must be s3://<bucket>/<prefix>"):
        load_settings()


def test_an_unreachable_store_is_a_clear_error(hosts, monkeypatch):
    from backend.core.errors import Unavailable
    from net import free_port
    from backend.serving import version_store as module
    monkeypatch.setattr(module, "_STORES", {})
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(Unavailable, match="version store: listing project 5's versions"):
        version_store(hosts[1]).names(PROJECT)


def test_a_store_outage_delays_a_swap_only_until_the_store_answers(hosts, redis_client, s3, monkeypatch):
    from net import free_port
    from backend.serving import version_store as module
    a, b = hosts
    published(a, "v0001-x")
    swap = HotSwap(b, redis_client, ModelCache(b.max_image_pixels))
    monkeypatch.setattr(module, "_STORES", {})
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    assert not swap.swap_to(PROJECT, "v0001-x")
    monkeypatch.setattr(module, "_STORES", {})
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    assert swap.swap_to(PROJECT, "v0001-x")  # at once: an outage is no reason to refuse the version for minutes
