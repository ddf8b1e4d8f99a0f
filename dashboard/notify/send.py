"""Post one notification body to a receiver, signed, within tight timeouts; say what happened."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

CONNECT_TIMEOUT = 3.0
TOTAL_TIMEOUT = 10.0
SIGNATURE_HEADER = "X-Dashboard-Signature"
USER_AGENT = "migration-dashboard-notify/1"


@dataclass(frozen=True)
class Outcome:
    """One attempt's result: the receiver's status code if it answered, and why it failed."""

    status: int | None
    error: str  # "" when delivered; never the URL or the exception's own text (it holds the URL)

    @property
    def delivered(self) -> bool:
        """Say whether the receiver took it (any 2xx)."""
        return not self.error


def signature(secret: bytes, body: bytes) -> str:
    """Return the X-Dashboard-Signature value: sha256= and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def post(
    url: str,
    body: bytes,
    *,
    secret: bytes | None,
    headers: dict[str, str] | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    total_timeout: float = TOTAL_TIMEOUT,
) -> Outcome:
    """POST body as JSON to url once (no retries, no redirects) and return the outcome."""
    sent = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **(headers or {}),
    }
    if secret is not None:
        sent[SIGNATURE_HEADER] = signature(secret, body)
    timeout = urllib3.Timeout(
        connect=min(connect_timeout, total_timeout), read=total_timeout, total=total_timeout
    )
    # One pool per attempt: attempts are seconds apart at least, and nothing lingers.
    with urllib3.PoolManager(retries=False, timeout=timeout) as pool:
        try:
            response = pool.request(
                "POST", url, body=body, headers=sent, redirect=False, preload_content=False
            )
        except Exception as exc:  # every failure becomes a recorded attempt, never a crash
            return Outcome(None, describe(exc, connect_timeout, total_timeout))
        try:
            status = response.status
        finally:
            response.release_conn()
            response.close()
    if 200 <= status < 300:
        return Outcome(status, "")
    if 300 <= status < 400:
        return Outcome(status, f"HTTP {status}: a redirect, not followed")
    return Outcome(status, f"HTTP {status}")


def describe(exc: BaseException, connect_timeout: float, total_timeout: float) -> str:
    """Say why an attempt failed in words of our own: urllib3's messages name the host and URL."""
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    # NewConnectionError is a ConnectTimeoutError to urllib3: ask for it first.
    if isinstance(exc, NameResolutionError):
        return "the receiver's host name does not resolve"
    if isinstance(exc, NewConnectionError):
        return "could not connect: refused or unreachable"
    if isinstance(exc, ConnectTimeoutError):
        return f"could not connect within {min(connect_timeout, total_timeout):g} s"
    if isinstance(exc, ReadTimeoutError | TimeoutError):
        return f"no answer within {total_timeout:g} s"
    if isinstance(exc, SSLError):
        return "the TLS handshake failed"
    if isinstance(exc, ProtocolError):
        return "the connection closed without an answer"
    if isinstance(exc, HTTPError):
        return f"HTTP client error ({type(exc).__name__})"
    if isinstance(exc, ValueError | LookupError):
        return "the receiver's URL cannot be used"
    return f"could not post ({type(exc).__name__})"
