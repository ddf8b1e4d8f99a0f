"""Ask Alembic itself, in a subprocess, whether it can load a script directory's history."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dashboard.scripts.ini import read_settings
from dashboard.scripts.scan import _scan, fingerprint_files

CHECK_TIMEOUT = 120.0

# As `alembic upgrade` starts: build the revision map, which imports every revision file and
# stops at the first that fails. The failure is placed in the innermost frame of a revision
# file (an import there, an exception raised at import time), or a syntax error's own line.
_CHECK = r"""
import json, os, sys, traceback
ini, location, out = sys.argv[1:4]
answer = {"ok": True, "file": "", "line": None, "error": ""}
folders = []
try:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    config = Config(ini) if ini else Config()
    if location:
        config.set_main_option("script_location", location.replace("%", "%%"))
    scripts = ScriptDirectory.from_config(config)
    folders = [os.path.realpath(v) + os.sep for v in scripts._version_locations]
    scripts.revision_map.heads
    scripts.revision_map.bases
except BaseException as exc:
    def inside(path):
        real = os.path.realpath(path)
        return any(real.startswith(folder) for folder in folders)
    place = ("", None)
    if isinstance(exc, SyntaxError) and exc.filename and inside(exc.filename):
        place = (exc.filename, exc.lineno)
    else:
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            if inside(frame.filename):
                place = (frame.filename, frame.lineno)
                break
        else:
            if isinstance(exc, SyntaxError) and exc.filename:
                place = (exc.filename, exc.lineno)
    text = str(exc).strip()
    answer = {
        "ok": False,
        "file": os.path.realpath(place[0]) if place[0] else "",
        "line": place[1],
        "error": f"{type(exc).__name__}: {text}" if text else type(exc).__name__,
    }
with open(out, "w", encoding="utf-8") as handle:
    json.dump(answer, handle)
"""


@dataclass(frozen=True)
class LoadCheck:
    """Whether Alembic loaded the history, and if not, where it first failed."""

    fingerprint: str
    ok: bool
    file: str = ""  # the revision file's real path; "" when no file is to blame
    line: int | None = None
    error: str = ""


def check_history_loads(
    script_location: Path | None = None,
    *,
    alembic_ini: Path | None = None,
    python: str,
    env: Mapping[str, str],
    timeout: float = CHECK_TIMEOUT,
) -> LoadCheck:
    """Return whether Alembic, run by `python` with `env`, loads every revision file."""
    # This executes the project's revision files: only the worker calls it.
    settings = read_settings(script_location, alembic_ini=alembic_ini)
    stamp = fingerprint_files(_scan(settings).files)
    ini = str(Path(alembic_ini).absolute()) if alembic_ini else ""
    location = "" if alembic_ini and script_location is None else str(settings.script_location)
    cwd = Path(alembic_ini).absolute().parent if alembic_ini else settings.script_location.parent
    with tempfile.TemporaryDirectory(prefix="alembic-load-check-") as tmp:
        out = os.path.join(tmp, "answer.json")
        try:
            # -P: like a run, nothing is imported from the working directory unless the
            # project's prepend_sys_path says so.
            done = subprocess.run(
                [python, "-P", "-c", _CHECK, ini, location, out],
                cwd=cwd,
                env=dict(env),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return LoadCheck(
                stamp, False, error=f"Alembic did not load the history in {timeout:g} s"
            )
        except OSError as exc:
            return LoadCheck(stamp, False, error=f"{python} cannot be started: {exc}")
        try:
            with open(out, encoding="utf-8") as handle:
                answer = json.load(handle)
        except (OSError, ValueError):
            tail = (done.stderr or done.stdout or "").strip().splitlines()[-1:] or ["no output"]
            return LoadCheck(stamp, False, error=f"the check itself failed: {tail[0]}")
    line = answer.get("line")
    return LoadCheck(
        fingerprint=stamp,
        ok=bool(answer.get("ok")),
        file=str(answer.get("file") or ""),
        line=int(line) if isinstance(line, int) else None,
        error=str(answer.get("error") or ""),
    )
