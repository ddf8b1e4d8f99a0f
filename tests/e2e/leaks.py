"""Watch everything the dashboard says, in pages, API answers and logs, for its secrets."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

SCANNED_TYPES = ("text/html", "application/json")


@dataclass
class Leak:
    """One place where a secret was found."""

    secret: str
    where: str


@dataclass
class LeakWatch:
    """Scan response bodies as they arrive and log files on demand; remember what was found."""

    secrets: Mapping[str, str] = field(repr=False)  # a failure report must not print them
    responses: int = 0
    response_bytes: int = 0
    reread: int = 0
    unreadable: list[str] = field(default_factory=list)
    log_lines: int = 0
    log_files: int = 0
    stored_bytes: int = 0
    leaks: list[Leak] = field(default_factory=list)

    def scan_response(self, url: str, content_type: str, body: bytes) -> None:
        """Scan one HTML or JSON answer (other types are static files we ship)."""
        if not content_type.startswith(SCANNED_TYPES):
            return
        self.responses += 1
        self.response_bytes += len(body)
        text = body.decode("utf-8", errors="replace")
        for label, secret in self.secrets.items():
            if secret in text:
                self.leaks.append(Leak(label, f"{content_type} answer of {url}"))

    def scan_logs(self, paths: Iterable[Path]) -> None:
        """Scan every line of these log files (counted afresh on each call)."""
        self.log_lines = 0
        self.log_files = 0
        self.leaks = [leak for leak in self.leaks if not leak.where.startswith("log ")]
        for path in paths:
            if not path.exists():
                continue
            self.log_files += 1
            with path.open(encoding="utf-8", errors="replace") as lines:
                for number, line in enumerate(lines, start=1):
                    self.log_lines += 1
                    for label, secret in self.secrets.items():
                        if secret in line:
                            self.leaks.append(Leak(label, f"log {path.name}:{number}"))

    def scan_stored(self, paths: Iterable[Path]) -> None:
        """Scan the dashboard's own database files byte for byte: secrets are never stored."""
        for path in paths:
            data = path.read_bytes()
            self.stored_bytes += len(data)
            for label, secret in self.secrets.items():
                if secret.encode() in data:
                    self.leaks.append(Leak(label, f"stored in {path.name}"))

    def summary(self) -> str:
        """Say what was scanned and what was found."""
        return (
            f"{self.responses} HTML/JSON responses ({self.response_bytes} bytes) and"
            f" {self.log_lines} log lines in {self.log_files} files"
            f" and {self.stored_bytes} bytes of the dashboard's database scanned for"
            f" {len(self.secrets)} secrets: {len(self.leaks)} occurrences"
            f" ({self.reread} fetched again after the page moved on; unread:"
            f" {', '.join(self.unreadable) or 'none'})"
        )

    def found(self) -> str:
        """List the leaks, one a line."""
        return "\n".join(f"{leak.secret} in {leak.where}" for leak in self.leaks)
