"""Online scoring: `quadra serve` against `mlflow models serve` of the same version, side by side,
and the time from an alias move to the first answer of the new version.

    .venv/bin/python benchmarks/bench_serving.py [--workers 1] [--concurrency 4] [--seconds 10]
                                                 [--field-size 100] [--moves 4] [--repeats 1]

What is measured, in one run on one machine (compare the ratios: these machines are noisy):

  * Throughput and latency. Both servers run as their own processes on loopback, serving the
    same registered version (v1 of a fresh model of N=--field-size, trained 0 batches: the
    serving cost does not depend on training) with the same number of uvicorn workers and one
    torch thread each (OMP_NUM_THREADS=1; ours sets it too): ours as production runs it
    (`quadra serve`, QUADRA_ENV=production, a bearer token checked on every request, the alias
    followed every 2 s), MLflow's as shipped (`mlflow models serve -m models:/<name>/1
    --env-manager local -w W`; it also logs every request, uvicorn's access log, which ours does
    not by default). Load: --concurrency clients in one asyncio process (uvloop), each on its
    own keep-alive connection sending the next request as soon as the last is answered (a
    closed loop: at most --concurrency requests in flight), for --seconds after 2 s of warm-up,
    with bodies of 1 and of 64 rows in MLflow's two JSON formats (`inputs`, and
    `dataframe_split`, what MLflow's own client sends). Latency is from the request's first byte
    written to its answer's last byte read. The servers take turns (MLflow, ours, for each
    shape), both up throughout; --repeats R alternates them R times and the table gives medians.
    Before measuring, both answer the same request and their predictions are compared.
  * Alias move -> first answer. A client sends 1-row requests back to back to ours while the
    alias `champion` is moved by one `set_registered_model_alias` call (time 0: just before the
    call). The time to the first answer from the new version, for --moves moves alternating
    v1 -> v2 -> v1 ... with no `challenger` alias (so nothing is verified ahead): the first move
    to v2 downloads and verifies it, later ones reuse what this process verified (verified
    again). Then one move the way the pipeline makes them: a new version v3 is registered (so
    `challenger` moves to it and the service verifies it ahead, not serving it), then `champion`
    moves to it. Three ways: polling every 2 s on the embedded store (`make serve`); polling
    every 2 s against an `mlflow server` (SQLite backend, artifacts served over HTTP, as in the
    stack); and MLflow's registry webhook on that server (the poll every 60 s, so only the
    webhook can make it fast).

Everything is made in a temp folder and removed at the end, even on failure or Ctrl-C; the
servers are stopped (SIGTERM, SIGKILL after 20 s). Exit status 1 if a server failed or an
answer differed, else 0; the targets are printed, not enforced: ours >= 1x MLflow's requests
per second and <= 1x its p99, for each shape.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import secrets
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 240
WARMUP_S = 2.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Servers ----------------------------------------------------------------------------------------

@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.monotonic)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def start(name: str, command: list[str], env: dict[str, str], port: int, folder: Path) -> Server:
    log = folder / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    return Server(name, port, process, log)


def wait_ready(server: Server, headers: dict[str, str]) -> float:
    import urllib.error
    import urllib.request

    started = server.started
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}: {server.log.read_text()[-2000:]}")
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{server.port}/ping", headers=headers)
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() - started > READY_TIMEOUT_S:
            raise RuntimeError(f"{server.name} not ready after {READY_TIMEOUT_S} s: {server.log.read_text()[-2000:]}")
        time.sleep(0.25)


def base_env(folder: Path, tracking_uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "QUADRA_", "DATABASE_URL"))}
    env.update(MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_DISABLE_TELEMETRY="true", OMP_NUM_THREADS="1",
               QUADRA_HOME=str(folder / "home"),
               # As in an activated venv: `mlflow models serve` runs `uvicorn` from PATH.
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return env


def ours_env(folder: Path, tracking_uri: str, model: str, public_key: Path, token_file: Path, poll: float,
             webhook_secret: Path | None = None) -> dict[str, str]:
    env = base_env(folder, tracking_uri)
    env.update(QUADRA_ENV="production", QUADRA_SERVING_MODEL=model, QUADRA_MODEL_VERIFY_KEY_FILE=str(public_key),
               QUADRA_SERVING_TOKEN_FILE=str(token_file), QUADRA_SERVING_POLL_SECONDS=str(poll),
               QUADRA_SERVING_CACHE_DIR=str(folder / "serving-cache"))
    if webhook_secret is not None:
        env["QUADRA_SERVING_WEBHOOK_SECRET_FILE"] = str(webhook_secret)
    return env


# Load -------------------------------------------------------------------------------------------

@dataclass
class Result:
    server: str
    shape: str
    requests: int
    errors: int
    seconds: float
    latencies: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] * 1000


def http_request(port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _client(port: int, request: bytes, start: float, end: float, out: Result) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            sent = time.perf_counter()
            if sent >= end:
                return
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            done = time.perf_counter()
            if sent >= start and done <= end:
                if head.startswith(b"HTTP/1.1 200"):
                    out.requests += 1
                    out.latencies.append(done - sent)
                else:
                    out.errors += 1
    finally:
        writer.close()


def closed_loop(server: str, shape: str, port: int, request: bytes, concurrency: int, seconds: float) -> Result:
    result = Result(server, shape, 0, 0, seconds)

    async def run() -> None:
        start = time.perf_counter() + WARMUP_S
        await asyncio.gather(*(_client(port, request, start, start + seconds, result) for _ in range(concurrency)))

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())
    return result


# Alias moves ------------------------------------------------------------------------------------

def time_moves(port: int, token: str, field_size: int, set_alias, versions: tuple[int, int], moves: int,
               before_each=None) -> list[tuple[str, float]]:
    """(what, seconds) for each move: from just before the alias call to the first answer of the
    new version, with a client sending 1-row requests back to back meanwhile. `versions`: the
    one served, then the other; `before_each(i)`, if given, returns (target, label) instead."""
    import http.client

    body = json.dumps({"inputs": [[0.1] * field_size]})
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    seen: list[tuple[float, str | None]] = []
    stop = threading.Event()

    def load() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while not stop.is_set():
            connection.request("POST", "/invocations", body, headers)
            response = connection.getresponse()
            response.read()
            seen.append((time.perf_counter(), response.getheader("X-Quadra-Model-Version")))

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    results = []
    verified: set[int] = {versions[0]}
    try:
        current = versions[0]
        for i in range(moves):
            target = versions[1] if current == versions[0] else versions[0]
            label = None
            if before_each is not None:
                target, label = before_each(i)
            time.sleep(1.0 + (i % 3) * 0.37)  # not in step with the poll
            before = len(seen)
            moved = time.perf_counter()
            set_alias(target)
            deadline = moved + 60
            while True:
                hit = next((t for t, v in seen[before:] if t >= moved and v == str(target)), None)
                if hit is not None:
                    break
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"version {target} not served within 60 s of the move")
                time.sleep(0.005)
            kind = label or ("to a version verified earlier (verified again)" if target in verified
                             else "to a new version (downloaded, verified)")
            results.append((f"v{current} -> v{target}, {kind}", hit - moved))
            verified.add(target)
            current = target
    finally:
        stop.set()
        thread.join(timeout=15)
    return results


def pipeline_move(registry, folder: Path, field_size: int, port: int, token: str, seed: int):
    """`before_each` for one move the pipeline's way: register a new version (challenger moves to
    it), wait until the service verified it ahead (its /metrics), then let the move happen."""
    import urllib.request

    def prepare(_: int) -> tuple[int, str]:
        [version] = register_versions(registry, folder, field_size, seeds=(seed,))
        deadline = time.monotonic() + 120
        while True:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                             headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(request, timeout=10) as response:
                text = response.read().decode()
            done = next((float(line.split()[-1]) for line in text.splitlines()
                         if line.startswith("quadra_serving_versions_preverified_total ")), 0)
            if done >= 1:
                return version, "to a new version registered as challenger, verified ahead (the pipeline's way)"
            if time.monotonic() > deadline:
                raise RuntimeError(f"version {version} was not verified ahead within 120 s")
            time.sleep(0.1)
    return prepare


# The run ----------------------------------------------------------------------------------------

def register_versions(registry, folder: Path, field_size: int, seeds=(0, 1)) -> list[int]:
    from quadra_pipeline.model import FieldTrainer, QuadraModel, save_checkpoint

    versions = []
    for seed in seeds:
        model = QuadraModel(field_size, seed=seed)
        checkpoint = folder / f"checkpoint-{seed}.pt"
        save_checkpoint(checkpoint, FieldTrainer(model), config={"field_size": field_size, "seed": seed})
        with registry.run("bench-serving", tags={"source": "bench"}) as run_id:
            versions.append(registry.register(run_id, model, checkpoint, tags={"source": "bench"}).version)
    return versions


def payloads(field_size: int) -> dict[str, bytes]:
    import numpy as np

    rng = np.random.default_rng(0)
    out = {}
    for rows in (1, 64):
        x = rng.normal(0, 1, size=(rows, field_size)).astype(np.float32).tolist()
        out[f"{rows} row{'s' if rows > 1 else ''}, inputs"] = json.dumps({"inputs": x}).encode()
        out[f"{rows} row{'s' if rows > 1 else ''}, dataframe_split"] = json.dumps(
            {"dataframe_split": {"columns": [f"f{i}" for i in range(field_size)], "data": x}}).encode()
    return out


def _interrupted(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of each server (1)")
    parser.add_argument("--concurrency", type=int, default=4, help="clients, each with one request in flight (4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per server and shape (10)")
    parser.add_argument("--field-size", type=int, default=100, help="N of the served model (100, the default)")
    parser.add_argument("--moves", type=int, default=4, help="alias moves timed per way of following (4)")
    parser.add_argument("--repeats", type=int, default=1, help="turns of each server per shape; medians (1)")
    args = parser.parse_args()
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/bench_serving.py", *sys.argv[1:]])
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{command}\n{when}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} cores",
          flush=True)
    signal.signal(signal.SIGTERM, _interrupted)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    from quadra_pipeline.keys import generate
    from quadra_pipeline.registry import ModelRegistry

    servers: list[Server] = []
    results: list[Result] = []
    moves: dict[str, list[tuple[str, float]]] = {}
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        keys = generate("ec-p256")
        public_key = folder / "model-signing.pub"
        public_key.write_bytes(keys.public_pem)
        token = secrets.token_hex(24)
        token_file = folder / "serving_token"
        token_file.write_text(token + "\n")
        auth = {"Authorization": f"Bearer {token}"}
        tracking = f"sqlite:///{folder / 'mlflow.db'}"
        model = "quadra-matrix-bench"
        registry = ModelRegistry(tracking, folder / "mlartifacts", model_name=model, keys=keys)
        registry.check_available()
        v1, v2 = register_versions(registry, folder, args.field_size)
        registry.set_alias("champion", v1)
        registry.delete_alias("challenger")  # nothing verified ahead: the moves below download
        print(f"registered {model} v{v1}, v{v2} (N={args.field_size}); champion -> v{v1}", flush=True)
        try:
            ports = {"mlflow": free_port(), "ours": free_port()}
            mlflow_env = base_env(folder, tracking)
            servers.append(start("mlflow", [str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{model}/{v1}",
                                            "--env-manager", "local", "-w", str(args.workers), "-h", "127.0.0.1",
                                            "-p", str(ports["mlflow"])], mlflow_env, ports["mlflow"], folder))
            servers.append(start("ours", [str(VENV_BIN / "quadra"), "serve", "--host", "127.0.0.1", "--port",
                                          str(ports["ours"]), "--workers", str(args.workers)],
                                 ours_env(folder, tracking, model, public_key, token_file, 2.0), ports["ours"], folder))
            for server in servers:
                print(f"  {server.name} ready {wait_ready(server, auth):.1f} s after its start (port {server.port})",
                      flush=True)

            # The same answer from both.
            import urllib.request

            sample = payloads(args.field_size)["1 row, inputs"]
            answers = {}
            for server in servers:
                request = urllib.request.Request(f"http://127.0.0.1:{server.port}/invocations", data=sample,
                                                 headers={"Content-Type": "application/json", **auth})
                with urllib.request.urlopen(request, timeout=10) as response:
                    answers[server.name] = json.loads(response.read())["predictions"]
            same = answers["ours"] == answers["mlflow"]
            print(f"  predictions of both for the same request: {'equal' if same else 'DIFFERENT'}", flush=True)
            failed |= not same

            bodies = payloads(args.field_size)
            for repeat in range(args.repeats):
                for shape, body in bodies.items():
                    for server in servers:
                        request = http_request(server.port, "/invocations", body, auth)
                        result = closed_loop(server.name, shape, server.port, request, args.concurrency, args.seconds)
                        results.append(result)
                        print(f"  [{repeat + 1}/{args.repeats}] {shape:<26} {server.name:<6} {result.rps:8.1f} req/s  "
                              f"p50 {result.percentile(50):6.2f} ms  p99 {result.percentile(99):6.2f} ms  "
                              f"errors {result.errors}", flush=True)
                        failed |= result.errors > 0
            for server in servers:
                server.stop()

            # Alias moves: polling on the embedded store.
            registry.set_alias("champion", v1)
            port = free_port()
            (folder / "m1").mkdir()
            polling = start("ours-moves", [str(VENV_BIN / "quadra"), "serve", "--port", str(port)],
                            ours_env(folder / "m1", tracking, model, public_key, token_file, 2.0), port, folder)
            servers.append(polling)
            wait_ready(polling, auth)
            label = "polling every 2 s, embedded store (make serve)"
            set_local = lambda v: registry.client.set_registered_model_alias(model, "champion", str(v))  # noqa: E731
            moves[label] = time_moves(port, token, args.field_size, set_local, (v1, v2), args.moves)
            served = v2 if args.moves % 2 else v1
            moves[label] += time_moves(port, token, args.field_size, set_local, (served, 0), 1,
                                       before_each=pipeline_move(registry, folder, args.field_size, port, token, 2))
            polling.stop()

            # ... and against an `mlflow server`, by polling and by its webhook.
            from cryptography.fernet import Fernet

            server_folder = folder / "mlflow-server"
            server_folder.mkdir()
            server_port = free_port()
            server_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
            server_env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true",
                              MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS="true", MLFLOW_WEBHOOK_ALLOWED_SCHEMES="http,https",
                              MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY=Fernet.generate_key().decode(),
                              MLFLOW_WEBHOOK_CACHE_TTL="1")
            tracking_server = start("mlflow-server", [str(VENV_BIN / "mlflow"), "server", "--workers", "1", "--host",
                                                      "127.0.0.1", "--port", str(server_port), "--backend-store-uri",
                                                      f"sqlite:///{server_folder / 'mlflow.db'}", "--artifacts-destination",
                                                      str(server_folder / "artifacts")], server_env, server_port, folder)
            servers.append(tracking_server)
            uri = f"http://127.0.0.1:{server_port}"
            deadline = time.monotonic() + READY_TIMEOUT_S
            while True:
                try:
                    with urllib.request.urlopen(f"{uri}/health", timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline or tracking_server.process.poll() is not None:
                        raise RuntimeError(f"mlflow server did not start: {tracking_server.log.read_text()[-2000:]}")
                    time.sleep(0.25)
            remote = ModelRegistry(uri, model_name=model, keys=keys)
            r1, r2 = register_versions(remote, folder, args.field_size)
            remote.set_alias("champion", r1)
            remote.delete_alias("challenger")
            secret = secrets.token_hex(24)
            secret_file = folder / "webhook_secret"
            secret_file.write_text(secret)

            def set_remote(v: int) -> None:
                remote.client.set_registered_model_alias(model, "champion", str(v))

            for label, poll, webhook, seed in (("polling every 2 s, mlflow server (the stack's shape)", 2.0, False, 3),
                                               ("MLflow webhook (polling every 60 s), mlflow server", 60.0, True, 4)):
                remote.set_alias("champion", r1)
                remote.delete_alias("challenger")
                port = free_port()
                home = folder / f"m-{int(poll)}"
                home.mkdir()
                follower = start(f"ours-{int(poll)}", [str(VENV_BIN / "quadra"), "serve", "--port", str(port)],
                                 ours_env(home, uri, model, public_key, token_file, poll,
                                          secret_file if webhook else None), port, folder)
                servers.append(follower)
                wait_ready(follower, auth)
                hook = None
                if webhook:
                    hook = remote.client.create_webhook(name="bench", url=f"http://127.0.0.1:{port}/webhooks/mlflow",
                                                        events=["model_version_alias.created"], secret=secret)
                    time.sleep(1.5)  # the server's webhook cache (MLFLOW_WEBHOOK_CACHE_TTL=1)
                moves[label] = time_moves(port, token, args.field_size, set_remote, (r1, r2), args.moves)
                served = r2 if args.moves % 2 else r1
                moves[label] += time_moves(port, token, args.field_size, set_remote, (served, 0), 1,
                                           before_each=pipeline_move(remote, folder, args.field_size, port, token, seed))
                if hook is not None:
                    remote.client.delete_webhook(hook.webhook_id)
                follower.stop()
        except Exception as exc:  # noqa: BLE001 - report what was measured, clean up, exit 1
            print(f"bench_serving: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed = True
        finally:
            for server in servers:
                server.stop()
            stack.close()

    report(results, moves, args, command, when)
    return 1 if failed else 0


def report(results: list[Result], moves: dict[str, list[tuple[str, float]]], args, command: str, when: str) -> None:
    if results:
        print(f"\nThroughput and latency: {args.workers} worker(s) each, {args.concurrency} clients in a closed loop, "
              f"{args.seconds:g} s per run after {WARMUP_S:g} s of warm-up, loopback; "
              f"{'medians of ' + str(args.repeats) + ' runs' if args.repeats > 1 else 'one run'}.\n")
        print("| body | server | requests/s | p50 ms | p99 ms | ours vs mlflow: throughput | p99 | target |")
        print("|---|---|---|---|---|---|---|---|")
        shapes = list(dict.fromkeys(r.shape for r in results))
        for shape in shapes:
            rows = {}
            for name in ("mlflow", "ours"):
                runs = [r for r in results if r.shape == shape and r.server == name]
                if runs:
                    rows[name] = (statistics.median(r.rps for r in runs), statistics.median(r.percentile(50) for r in runs),
                                  statistics.median(r.percentile(99) for r in runs))
            for name, (rps, p50, p99) in rows.items():
                ratio = ""
                if name == "ours" and "mlflow" in rows:
                    throughput = rps / rows["mlflow"][0]
                    tail = p99 / rows["mlflow"][2]
                    meets = throughput >= 1.0 and tail <= 1.0
                    ratio = f" {throughput:.2f}x | {tail:.2f}x | {'meets' if meets else 'MISSES'} (>= 1x, <= 1x)"
                else:
                    ratio = " | | "
                label = "`mlflow models serve`" if name == "mlflow" else "`quadra serve`"
                print(f"| {shape} | {label} | {rps:.0f} | {p50:.2f} | {p99:.2f} |{ratio} |")
    if moves:
        print("\nAlias move -> first answer of the new version (`quadra serve`, 1 worker; time 0 just before the "
              "set_registered_model_alias call):\n")
        print("| how it follows | move | seconds |")
        print("|---|---|---|")
        for label, timings in moves.items():
            for what, seconds in timings:
                print(f"| {label} | {what} | {seconds:.2f} |")
        print()
        for label, timings in moves.items():
            values = [s for _, s in timings]
            print(f"{label}: median {statistics.median(values):.2f} s, max {max(values):.2f} s (target: within 10 s)")
    print(f"\ncommand: {command}\ndate: {when}")


if __name__ == "__main__":
    sys.exit(main())
