"""MLflow registry webhooks (`model_version_alias.created` / `.deleted`), checked.

MLflow 3.17 signs each delivery the Standard Webhooks way: the headers `X-MLflow-Delivery-Id`,
`X-MLflow-Timestamp` (Unix seconds) and `X-MLflow-Signature: v1,<base64 HMAC-SHA256 of
"<delivery id>.<timestamp>.<body>" under the webhook's secret>`. A delivery is taken only if the
signature matches (compared in constant time), its timestamp is within five minutes of this
host's clock, and its delivery id was not seen before (a replay is answered but ignored).

A delivery carries no trust beyond "look now": it only wakes the follower, which then reads the
alias from the registry and verifies the version as on any poll. A forged or replayed delivery
could at most cause one extra look.

What MLflow 3.17 needs to deliver one (checked here, see the tests): the tracking *server*
delivers (an embedded SQL store's client does not), only to https URLs unless
MLFLOW_WEBHOOK_ALLOWED_SCHEMES allows http, only to public addresses unless
MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true (which turns its SSRF protection off), it stores the secret
encrypted under MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY (unset: a random key per server process, so
a restarted server can no longer sign), and it caches the webhook list for
MLFLOW_WEBHOOK_CACHE_TTL seconds (60).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

SIGNATURE_HEADER = "x-mlflow-signature"
TIMESTAMP_HEADER = "x-mlflow-timestamp"
DELIVERY_HEADER = "x-mlflow-delivery-id"
TOLERANCE_SECONDS = 300
ALIAS_ENTITY = "model_version_alias"


class WebhookRefused(Exception):
    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class WebhookVerifier:
    def __init__(self, secret: bytes, *, tolerance: float = TOLERANCE_SECONDS, remember: int = 4096) -> None:
        self.secret = secret
        self.tolerance = tolerance
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._remember = remember

    def verify(self, headers: Mapping[str, str], body: bytes, now: float | None = None) -> tuple[dict[str, Any], bool]:
        """The delivery's JSON and whether it is new (False: a replay); `WebhookRefused` unless signed."""
        now = time.time() if now is None else now
        delivery = headers.get(DELIVERY_HEADER)
        timestamp = headers.get(TIMESTAMP_HEADER)
        signature = headers.get(SIGNATURE_HEADER)
        if not delivery or not timestamp or not signature:
            raise WebhookRefused("not a signed MLflow webhook delivery (X-MLflow-Delivery-Id, X-MLflow-Timestamp and "
                                 "X-MLflow-Signature are required)")
        try:
            sent = int(timestamp)
        except ValueError:
            raise WebhookRefused("X-MLflow-Timestamp is not a Unix time") from None
        if abs(now - sent) > self.tolerance:
            raise WebhookRefused(f"the delivery's timestamp is {now - sent:+.0f} s from this host's clock (more than "
                                 f"{self.tolerance:.0f} s)")
        digest = hmac.new(self.secret, f"{delivery}.{timestamp}.".encode() + body, hashlib.sha256).digest()
        expected = base64.b64encode(digest)
        if not any(part.startswith("v1,") and hmac.compare_digest(part[3:].encode(), expected)
                   for part in signature.split()):
            raise WebhookRefused("the delivery's signature does not match the webhook secret")
        try:
            payload = json.loads(body)
        except ValueError:
            raise WebhookRefused("the delivery's body is not JSON", status=400) from None
        if not isinstance(payload, dict):
            raise WebhookRefused("the delivery's body is not a JSON object", status=400)
        new = delivery not in self._seen
        self._seen[delivery] = now
        while len(self._seen) > self._remember or (self._seen and next(iter(self._seen.values())) < now - 2 * self.tolerance):
            self._seen.popitem(last=False)
        return payload, new


def concerns(payload: Mapping[str, Any], model: str, alias: str) -> bool:
    """Whether a delivery is about this model's alias (a move, or its removal)."""
    data = payload.get("data")
    return (payload.get("entity") == ALIAS_ENTITY and isinstance(data, Mapping) and data.get("name") == model
            and data.get("alias") == alias)
