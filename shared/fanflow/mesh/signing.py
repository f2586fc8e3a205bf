"""Results signed per deployment: a worker's result carries an HMAC the aggregator checks.

Anything that can reach the broker could otherwise publish a "succeeded" result, with
chosen outputs, for any run. Each deployment has one secret (`FANFLOW_RESULT_KEY`, or the
file `FANFLOW_RESULT_KEY_FILE` names); workers sign the encoded body of every `TaskResult`
with HMAC-SHA256 into the `fanflow-signature` header, and the aggregator applies a result
(from the results queue or the dead-result queue) only when that signature matches. A
result without one, or with a wrong one, is acknowledged and dropped, logged and counted
(`fanflow_results_rejected_total`); it never reaches its run.

The signature covers the whole body (run, task, attempt, status, outputs), so a copy of a
genuine result can only repeat that same result, which the aggregator drops as a duplicate.
One `ResultKey` per process: each message costs one copy of the keyed state and the hash.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fanflow.metrics import RESULTS_REJECTED

if TYPE_CHECKING:
    from fanflow.mesh.transport import Delivery

log = logging.getLogger("fanflow.aggregator")

#: the header holding a result's signature (hex HMAC-SHA256 of the body)
HEADER_SIGNATURE = "fanflow-signature"
#: the shortest secret accepted (bytes of its UTF-8 text)
MIN_KEY_BYTES = 16


class ResultKey:
    """A deployment's result secret, keyed once; signs and verifies result bodies."""

    __slots__ = ("_keyed",)

    def __init__(self, secret: str | bytes) -> None:
        raw = secret.encode() if isinstance(secret, str) else secret
        if len(raw) < MIN_KEY_BYTES:
            raise ValueError(
                f"the result key must have at least {MIN_KEY_BYTES} bytes, got {len(raw)} "
                "(generate one with `python -c 'import secrets; print(secrets.token_hex(32))'`)"
            )
        self._keyed = hmac.new(raw, digestmod=hashlib.sha256)

    def __repr__(self) -> str:
        return "ResultKey(<secret>)"

    def sign(self, body: bytes) -> str:
        mac = self._keyed.copy()
        mac.update(body)
        return mac.hexdigest()

    def headers(self, body: bytes) -> dict[str, str]:
        """The header that signs `body`."""
        return {HEADER_SIGNATURE: self.sign(body)}

    def check(self, body: bytes, headers: Mapping[str, Any]) -> str | None:
        """None when `headers` sign `body`; else why not ("missing" or "bad")."""
        signature = headers.get(HEADER_SIGNATURE)
        if isinstance(signature, bytes):
            signature = signature.decode("ascii", errors="replace")
        if not isinstance(signature, str) or not signature:
            return "missing"
        if not hmac.compare_digest(self.sign(body), signature):
            return "bad"
        return None


def rejected(key: ResultKey | None, delivery: Delivery, *, queue: str) -> bool:
    """Whether a result delivery must be dropped unapplied: its signature is missing or
    wrong (logged and counted under `queue`). With no key (an insecure deployment) every
    result passes."""
    if key is None:
        return False
    reason = key.check(delivery.body, delivery.headers)
    if reason is None:
        return False
    RESULTS_REJECTED.labels(queue, reason).inc()
    log.error(
        "%s: dropping result %r (run %r per its headers): %s signature; forged, or signed "
        "with another deployment's FANFLOW_RESULT_KEY",
        queue,
        delivery.message_id,
        delivery.headers.get("fanflow-run-id"),
        reason,
    )
    return True
