"""Loopback receivers for the alert tests: an HTTP server that records what is POSTed (or answers
an error, or never answers), and an SMTP server (aiosmtpd) that records each message and checks
the login. Both bind 127.0.0.1 on a free port and stop when the test ends."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import Message
from typing import Any


@dataclass
class Webhook:
    url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    attempts: int = 0
    arrived: list[float] = field(default_factory=list)  # time.time() of each body in `received`


@contextlib.contextmanager
def webhook_receiver(status: int = 200, path: str = "/hook?token=s3cr3t-token", host: str = "127.0.0.1") -> Iterator[Webhook]:
    """Records each JSON body POSTed to it and answers `status`. `host`: the address it listens
    on (a Docker network's gateway, for containers to reach it)."""
    hook = Webhook(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            hook.attempts += 1
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            hook.paths.append(self.path)
            if status == 200:
                hook.received.append(json.loads(body))
                hook.arrived.append(time.time())
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    hook.url = f"http://{host}:{server.server_port}{path}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def silent_receiver() -> Iterator[tuple[str, list[float]]]:
    """Accepts connections and never answers: (URL, the times each connection came)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    arrivals: list[float] = []
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            arrivals.append(time.monotonic())
            held.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook?token=s3cr3t-token", arrivals
    finally:
        stop.set()
        thread.join(timeout=2)
        for connection in held:
            connection.close()
        listener.close()


@dataclass
class Mailbox:
    host: str
    port: int
    messages: list[Message] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    logins: list[tuple[str, bool]] = field(default_factory=list)


@contextlib.contextmanager
def smtp_receiver(user: str = "alerts", password: str = "mail-s3cret", exclude: tuple[str, ...] = ()) -> Iterator[Mailbox]:
    """An SMTP server (no TLS) that requires a login as `user`/`password` and keeps each message.
    `exclude`: AUTH mechanisms not offered (Alertmanager 0.25 takes the first one offered, and its
    LOGIN expects the challenge "Username:", where aiosmtpd says "User Name")."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    box = Mailbox("127.0.0.1", port)

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
            box.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            box.messages.append(message_from_bytes(envelope.original_content or envelope.content, policy=policy.default))
            return "250 OK"

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user and auth_data.password.decode() == password
        box.logins.append((auth_data.login.decode() if isinstance(auth_data, LoginPassword) else "?", ok))
        return AuthResult(success=ok, handled=False)

    controller = Controller(Handler(), hostname="127.0.0.1", port=port, authenticator=authenticator,
                            auth_required=True, auth_require_tls=False, auth_exclude_mechanism=list(exclude))
    controller.start()
    try:
        yield box
    finally:
        controller.stop()
