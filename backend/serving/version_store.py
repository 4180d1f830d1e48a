"""Where a project's trained versions are kept for every process that serves or trains: one small
interface, two kinds.

- `LocalStore` (the default): the data directory itself. A version is published when its folder
  appears (a training job renames it into place) and loads from that folder; one machine, or
  several sharing the data directory, need nothing else.
- `S3Store` (`AESEMO_VERSION_STORE=s3://<bucket>/<prefix>`): an S3-compatible bucket. A version is
  `<prefix>/<project>/<version>/` holding every file of its folder, and `version.json` (its
  manifest: each file's sha256 and size, and the version's model.json), written last and never
  replaced: a version without its manifest is not there yet, and one with it never changes. Each
  process downloads the versions it uses into its own data directory (backend/serving/
  version_cache.py), checking every file against the manifest.

boto3 finds the endpoint (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`), the credentials (the
standard chain: variables, profiles, instance roles) and the region (`AWS_DEFAULT_REGION`) itself.
"""
from __future__ import annotations

import json
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

from model.errors import VersionError
from model.version import META_FILE, checked_file, meta_problem, read_meta, sha256_file

from backend.core.errors import Conflict, NotFound, Unavailable

MANIFEST = "version.json"
FORMAT = 1


def version_files(folder: Path) -> list[str]:
    """The files a version is made of, relative to its folder; none under a dot name (a lock, a
    file being written)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


class LocalStore:
    """The data directory as the store: what is published is already where it loads from."""
    shared = False

    def __init__(self, data_dir: Path):
        self.root = Path(data_dir) / "projects"

    def folder(self, project: str, name: str) -> Path:
        return self.root / project / "versions" / name

    def names(self, project: str) -> list[str]:
        versions = self.root / project / "versions"
        return sorted(p.parent.name for p in versions.glob(f"*/{META_FILE}") if not p.parent.name.startswith("."))

    def meta(self, project: str, name: str) -> dict:
        return read_meta(self.folder(project, name))

    def publish(self, project: str, name: str, folder: Path) -> None:
        """Nothing to copy: the folder is in the data directory already."""

    def delete(self, project: str, name: str) -> None:
        shutil.rmtree(self.folder(project, name), ignore_errors=True)


class S3Store:
    """An S3-compatible bucket under a prefix (see the module docstring)."""
    shared = True

    def __init__(self, url: str):
        self.url = url
        self.bucket, _, prefix = url[len("s3://"):].partition("/")
        self.prefix = prefix.strip("/")
        self._client = None
        self._manifests: dict[tuple[str, str], dict] = {}  # immutable once written: kept for the process
        self._lock = threading.Lock()

    @property
    def client(self):
        with self._lock:
            if self._client is None:
                import boto3
                self._client = boto3.client("s3")
            return self._client

    def key(self, project: str, name: str = "", file: str = "") -> str:
        return "/".join(part for part in (self.prefix, project, name, file) if part)

    def names(self, project: str) -> list[str]:
        """The project's published versions (those whose manifest is written)."""
        start = self.key(project) + "/"
        found = []
        with _store_errors(f"listing project {project}'s versions"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
                found += [item["Key"][len(start):].split("/") for item in page.get("Contents", [])]
        return sorted(parts[0] for parts in found if parts[1:] == [MANIFEST])

    def manifest(self, project: str, name: str) -> dict | None:
        """The version's manifest; None when it is not (or not yet) published."""
        cached = self._manifests.get((project, name))
        if cached is not None:
            return cached
        with _store_errors(f"reading version {name}'s manifest"):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=self.key(project, name, MANIFEST))["Body"].read()
            except self.client.exceptions.NoSuchKey:
                return None
        manifest = _parsed_manifest(name, body)
        self._manifests[(project, name)] = manifest
        return manifest

    def meta(self, project: str, name: str) -> dict:
        """The version's model.json as its manifest carries it; VersionError when malformed."""
        manifest = self.manifest(project, name)
        if manifest is None:
            raise VersionError(f"version {name} is not in the store")
        problem = meta_problem(manifest["meta"])
        if problem:
            raise VersionError(f"{name}/{META_FILE}: {problem}")
        return manifest["meta"]

    def publish(self, project: str, name: str, folder: Path) -> None:
        """Every file of `folder`, then the manifest: a reader sees the whole version or none of it."""
        if self.manifest(project, name) is not None:
            raise Conflict(f"version {name} of project {project} is already in the store; versions never change")
        files = {rel: {"sha256": sha256_file(folder / rel), "bytes": (folder / rel).stat().st_size}
                 for rel in version_files(folder)}
        manifest = {"format": FORMAT, "version": name, "files": files, "meta": read_meta(folder)}
        with _store_errors(f"uploading version {name}"):
            for rel in files:
                self.client.upload_file(str(folder / rel), self.bucket, self.key(project, name, rel))
            # IfNoneMatch: a manifest is written once; a second publisher of the same name fails here
            self.client.put_object(Bucket=self.bucket, Key=self.key(project, name, MANIFEST), IfNoneMatch="*",
                                   Body=json.dumps(manifest, indent=1).encode(), ContentType="application/json")
        self._manifests[(project, name)] = manifest

    def download(self, project: str, name: str, folder: Path) -> None:
        """Every file of the version into `folder`, each checked against the manifest's sha256."""
        manifest = self.manifest(project, name)
        if manifest is None:
            raise NotFound(f"project {project} has no version {name!r} in the store")
        for rel, info in manifest["files"].items():
            target = folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with _store_errors(f"downloading {name}/{rel}"):
                    self.client.download_file(self.bucket, self.key(project, name, rel), str(target))
            except NotFound:
                self._manifests.pop((project, name), None)
                raise
            checked_file(target, info["sha256"])

    def read_file(self, project: str, name: str, file: str) -> bytes | None:
        """One file of a published version (a report's PNG); None when it has no such file."""
        manifest = self.manifest(project, name)
        if manifest is None or file not in manifest["files"]:
            return None
        with _store_errors(f"reading {name}/{file}"):
            return self.client.get_object(Bucket=self.bucket, Key=self.key(project, name, file))["Body"].read()

    def delete(self, project: str, name: str) -> None:
        """The manifest first, so the version is gone for every reader before its files go."""
        with _store_errors(f"deleting version {name}"):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(project, name, MANIFEST))
            self._manifests.pop((project, name), None)
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.key(project, name) + "/"):
                batch = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if batch:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})


def _parsed_manifest(name: str, body: bytes) -> dict:
    """A manifest read back, its shape checked: file names stay inside the version's folder."""
    try:
        manifest = json.loads(body)
    except ValueError as exc:
        raise VersionError(f"{name}/{MANIFEST} cannot be read: {exc}") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not (isinstance(files, dict) and isinstance(manifest.get("meta"), dict) and all(
            isinstance(rel, str) and rel and not rel.startswith("/") and ".." not in rel.split("/")
            and isinstance(info, dict) and isinstance(info.get("sha256"), str) for rel, info in files.items())):
        raise VersionError(f"{name}/{MANIFEST} is not a version manifest")
    return manifest


@contextmanager
def _store_errors(doing: str):
    """The SDK's errors (unreachable endpoint, refused credentials, a missing bucket) as
    Unavailable, naming what was being done; never the credentials."""
    from botocore.exceptions import BotoCoreError, ClientError
    try:
        yield
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):  # deleted meanwhile (retention)
            raise NotFound(f"version store: {doing}: not found") from None
        raise Unavailable(f"version store: {doing}: {exc}") from None
    except BotoCoreError as exc:
        raise Unavailable(f"version store: {doing}: {exc}") from None


_STORES: dict[str, S3Store] = {}
_STORES_LOCK = threading.Lock()


def version_store(settings) -> LocalStore | S3Store:
    """The store the settings name; one S3Store per address in a process (its client and the
    manifests it read are reused)."""
    if not settings.version_store:
        return LocalStore(settings.data_dir)
    with _STORES_LOCK:
        store = _STORES.get(settings.version_store)
        if store is None:
            store = _STORES[settings.version_store] = S3Store(settings.version_store)
        return store
