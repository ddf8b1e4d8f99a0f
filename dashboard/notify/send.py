"""Post one notification body to a receiver, signed, within a wall-clock deadline."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import re
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationValueError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util import parse_url

CONNECT_TIMEOUT = 3.0
TOTAL_TIMEOUT = 10.0
SIGNATURE_HEADER = "X-Dashboard-Signature"
USER_AGENT = "migration-dashboard-notify/1"
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://\S+")
_REQUEST_PATH = re.compile(r'("[A-Z]+ )\S+')  # its debug line: '"POST /path HTTP/1.1" 200'


class _NoURLs(logging.Filter):
    """Mask URLs in urllib3's own log lines: a receiver's URL (a Slack hook's path) is a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = _URL.sub("<url>", record.getMessage())
        record.msg, record.args = _REQUEST_PATH.sub(r"\1<path>", message), None
        return True


# urllib3 warns "Failed to parse headers (url=…)" about a receiver's broken or cut-off headers.
for _name in ("urllib3.connection", "urllib3.connectionpool"):
    logging.getLogger(_name).addFilter(_NoURLs())


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
    """POST body as JSON to url once (no retries, no redirects), all within total_timeout."""
    sent = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **(headers or {}),
    }
    if secret is not None:
        sent[SIGNATURE_HEADER] = signature(secret, body)
    # Per socket operation; the deadline below bounds the whole attempt.
    timeout = urllib3.Timeout(connect=min(connect_timeout, total_timeout), read=total_timeout)
    deadline = _Deadline(total_timeout)
    try:
        target = parse_url(url)
        pool_class = _POOLS[target.scheme or ""]
        if not target.host:
            raise LocationValueError("no host")
        # One pool per attempt: attempts are seconds apart at least, and nothing lingers.
        pool = pool_class(
            target.host, target.port, timeout=timeout, retries=False, maxsize=1, deadline=deadline
        )
    except (LookupError, ValueError):
        return Outcome(None, "the receiver's URL cannot be used")
    status: int | None = None
    failure: BaseException | None = None
    with pool, deadline:
        try:
            response = pool.urlopen(
                "POST",
                target.request_uri,
                body=body,
                headers=sent,
                redirect=False,
                preload_content=False,  # the body is never read: only the status counts
            )
            status = response.status
            response.close()
        except Exception as exc:  # every failure becomes a recorded attempt, never a crash
            failure = exc
        late = deadline.stop()
    if late:  # cut at the deadline: a status read from a cut stream proves nothing
        return Outcome(None, f"no answer within {total_timeout:g} s")
    if failure is not None or status is None:
        return Outcome(None, describe(failure or ProtocolError(), connect_timeout, total_timeout))
    if 200 <= status < 300:
        return Outcome(status, "")
    if 300 <= status < 400:
        return Outcome(status, f"HTTP {status}: a redirect, not followed")
    return Outcome(status, f"HTTP {status}")


class _Deadline:
    """Cut an attempt's connection once its time is up, in whatever phase it is."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.connections: list[HTTPConnection] = []
        self._expired = False
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="notify-deadline", daemon=True)

    def __enter__(self) -> _Deadline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._thread.join(timeout=1)

    def stop(self) -> bool:
        """Stop watching; say whether the time ran out first."""
        with self._lock:
            self._done.set()
            return self._expired

    def _watch(self) -> None:
        if self._done.wait(self.seconds):
            return
        with self._lock:
            if self._done.is_set():
                return
            self._expired = True
        # Per-read timeouts let a receiver that drips a byte at a time go on for ever; cutting
        # the socket ends any read. Again and again: a connect may still hand over its socket.
        while True:
            for conn in list(self.connections):
                _cut(conn.sock)
            if self._done.wait(0.05):
                return


def _cut(sock: socket.socket | None) -> None:
    if sock is None:
        return
    # The plain socket's shutdown, even under TLS: a blocked read wakes up at once.
    with contextlib.suppress(OSError):  # closed already
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _HTTPConnection(HTTPConnection):
    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        deadline.connections.append(self)


class _HTTPSConnection(HTTPSConnection):
    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        deadline.connections.append(self)


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS: dict[str, type[HTTPConnectionPool]] = {"http": _HTTPPool, "https": _HTTPSPool}


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
    if isinstance(exc, SSLError | ssl.SSLError):
        return "the TLS handshake failed"
    if isinstance(exc, ProtocolError):
        return "the connection closed without an answer"
    if isinstance(exc, LocationValueError):
        return "the receiver's URL cannot be used"
    if isinstance(exc, HTTPError):
        return f"HTTP client error ({type(exc).__name__})"
    if isinstance(exc, ValueError | LookupError):
        return "the receiver's URL cannot be used"
    return f"could not post ({type(exc).__name__})"
