"""Alerts to a person: a JSON POST to a webhook and/or an e-mail through SMTP, or an alert posted
to an Alertmanager that delivers it to its own receivers; bounded.

Each receiver gets at most two attempts (one retry after `RETRY_PAUSE_SECONDS`), each bounded by
`QUADRA_ALERT_TIMEOUT`; a receiver that failed is left alone for `BACKOFF_SECONDS` afterwards
(every alert in that time is reported as not sent to it, without waiting again), so a dead
webhook costs one sensor evaluation at most a few seconds, never the sensor's whole tick. The
webhook's URL may hold a token: it is never logged or put in a message (only its scheme and host
are). No third-party client: `urllib.request` and `smtplib`.
"""

from __future__ import annotations

import datetime as dt
import json
import smtplib
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import urlsplit

from ..settings import Settings

RETRY_PAUSE_SECONDS = 1.0
BACKOFF_SECONDS = 60.0
MAX_RESPONSE_BYTES = 64 * 1024

_down_until: dict[str, float] = {}  # receiver key -> monotonic time before which it is not tried
_down_lock = threading.Lock()


@dataclass(frozen=True)
class Alert:
    """What is sent: `subject` (one line), `text` (the e-mail body), `payload` (the webhook's JSON);
    to an Alertmanager: the alert `name` with `labels` (what tells one alert from another: grouping
    and silences) and `url` (where it comes from, Alertmanager's generatorURL)."""

    subject: str
    text: str
    payload: Mapping[str, Any]
    name: str = "QuadraAlert"
    labels: Mapping[str, str] = field(default_factory=dict)
    url: str | None = None


@dataclass
class Delivery:
    """What happened to one alert: receivers it reached, and why the others were not reached."""

    sent: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def configured(self) -> bool:
        return bool(self.sent or self.failed)

    def summary(self) -> str:
        parts = [f"sent to {', '.join(self.sent)}"] if self.sent else []
        parts += [f"NOT sent to {name} ({why})" for name, why in self.failed.items()]
        return "; ".join(parts) if parts else "no alert receiver is configured"


class AlertDeliveryError(RuntimeError):
    """No configured receiver could be reached (the message says why, secrets left out)."""


def webhook_label(url: str) -> str:
    """The webhook as it may be shown: scheme and host only (the path or query may hold a token)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"webhook {parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}/..."


def alertmanager_label(url: str) -> str:
    parts = urlsplit(url)
    return f"Alertmanager {parts.scheme}://{parts.hostname or '?'}{f':{parts.port}' if parts.port else ''}"


def receivers_configured(settings: Settings) -> list[str]:
    names = []
    if settings.alertmanager_url:
        names.append(alertmanager_label(settings.alertmanager_url))
    if settings.alert_webhook_url is not None:
        names.append(webhook_label(settings.alert_webhook_url.get_secret_value()))
    if settings.alert_smtp_host:
        names.append(f"e-mail via {settings.alert_smtp_host}:{settings.alert_smtp_port}")
    return names


def send_alert(alert: Alert, settings: Settings, log: Callable[[str], None] | None = None) -> Delivery:
    """Send `alert` to every configured receiver; never raises for a receiver that fails (see
    `Delivery`). With no receiver configured, nothing happens (`Delivery.configured` is False)."""
    say = log or (lambda _message: None)
    delivery = Delivery()
    if settings.alertmanager_url:
        target = settings.alertmanager_url.rstrip("/") + "/api/v2/alerts"
        _attempt(alertmanager_label(settings.alertmanager_url),
                 lambda: post_json(target, [alertmanager_alert(alert)], settings.alert_timeout), delivery, say)
    if settings.alert_webhook_url is not None:
        url = settings.alert_webhook_url.get_secret_value()
        _attempt(webhook_label(url), lambda: post_json(url, alert.payload, settings.alert_timeout), delivery, say)
    if settings.alert_smtp_host:
        name = f"e-mail via {settings.alert_smtp_host}:{settings.alert_smtp_port}"
        _attempt(name, lambda: send_email(alert, settings), delivery, say)
    return delivery


def _attempt(name: str, action: Callable[[], None], delivery: Delivery, say: Callable[[str], None]) -> None:
    now = time.monotonic()
    with _down_lock:
        until = _down_until.get(name, 0.0)
    if until > now:
        why = f"it failed less than {BACKOFF_SECONDS:.0f} s ago; not tried again before {until - now:.0f} s from now"
        delivery.failed[name] = why
        say(f"alert {name}: {why}")
        return
    last = ""
    for attempt in (1, 2):
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - any failure of a receiver is reported, never raised
            last = _reason(exc)
            say(f"alert {name}: attempt {attempt} of 2 failed: {last}")
            if attempt == 1:
                time.sleep(RETRY_PAUSE_SECONDS)
            continue
        delivery.sent.append(name)
        with _down_lock:
            _down_until.pop(name, None)
        return
    delivery.failed[name] = last
    with _down_lock:
        _down_until[name] = time.monotonic() + BACKOFF_SECONDS


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"answered HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, (TimeoutError, OSError)) and "timed out" in str(exc).lower():
        return "no answer in time (timed out)"
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return f"the SMTP server refused the login (SMTP {exc.smtp_code})"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"the SMTP server answered {exc.smtp_code}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


def alertmanager_alert(alert: Alert, now: dt.datetime | None = None) -> dict[str, Any]:
    """`alert` in Alertmanager's API v2 form. No end time: Alertmanager resolves it after its
    `resolve_timeout` (an event such as a failed run is not re-sent, so it is never "still firing")."""
    started = (now or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="seconds")
    body: dict[str, Any] = {
        "labels": {"alertname": alert.name, "severity": "page", **{k: str(v) for k, v in alert.labels.items()}},
        "annotations": {"summary": alert.subject, "description": alert.text},
        "startsAt": started,
    }
    if alert.url:
        body["generatorURL"] = alert.url
    return body


def post_json(url: str, payload: Any, timeout: float) -> None:
    """POST `payload` as JSON; any answer but 2xx (or no answer within `timeout`) raises."""
    body = json.dumps(payload, sort_keys=True, default=str).encode("utf-8")
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "quadra-pipeline-alerts"})
    # No redirects: a token in the URL must not follow one to another host.
    opener = urllib.request.build_opener(_NoRedirect)
    with opener.open(request, timeout=timeout) as response:
        response.read(MAX_RESPONSE_BYTES)
        if not 200 <= response.status < 300:
            raise urllib.error.HTTPError(url, response.status, "not 2xx", response.headers, None)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        return None


def send_email(alert: Alert, settings: Settings) -> None:
    """One e-mail to QUADRA_ALERT_SMTP_TO through QUADRA_ALERT_SMTP_HOST (starttls, ssl or none)."""
    # RFC 5322's line limit: Python's default (78) folds a long subject right after "Subject:".
    message = EmailMessage(policy=policy.SMTP.clone(max_line_length=998))
    message["Subject"] = alert.subject
    message["From"] = settings.alert_smtp_from or ""
    message["To"] = ", ".join(settings.alert_smtp_recipients)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=(settings.alert_smtp_from or "quadra@localhost").rpartition("@")[2])
    message.set_content(alert.text)
    host, port, timeout = settings.alert_smtp_host or "", settings.alert_smtp_port, settings.alert_timeout
    if settings.alert_smtp_tls == "ssl":
        client: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=timeout, context=ssl.create_default_context())
    else:
        client = smtplib.SMTP(host, port, timeout=timeout)
    with client:
        if settings.alert_smtp_tls == "starttls":
            client.starttls(context=ssl.create_default_context())
        if settings.alert_smtp_user and settings.alert_smtp_password is not None:
            client.login(settings.alert_smtp_user, settings.alert_smtp_password.get_secret_value())
        client.send_message(message)


def reset_backoff() -> None:
    """Forget receivers that failed (tests; a new process starts clean anyway)."""
    with _down_lock:
        _down_until.clear()
