"""Load a history with Alembic's own loader, in a subprocess, for non-literal revision files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from dashboard.history import Graph, Revision
from dashboard.scripts.cache import LoadedHistory, _entry
from dashboard.scripts.childenv import allowed_environment
from dashboard.scripts.ini import read_settings
from dashboard.scripts.parse import _CREATE_DATE
from dashboard.scripts.scan import _scan, fingerprint_files

ALEMBIC_TIMEOUT = 120.0


_ALEMBIC_LOADER = r"""
import hashlib, importlib.util, json, os, sys
from pathlib import Path
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.script.base import Script

ini, location, out = sys.argv[1:4]

# Each revision module is built from the bytes hashed here, never from a cached .pyc, so the
# hashes say exactly which bytes the answer describes.
hashes = {}
try:
    from alembic.util import pyfiles
    _load_module_py = pyfiles.load_module_py
except (ImportError, AttributeError):
    pyfiles = None

def load_module_py(module_id, path):
    path = str(path)
    if not path.endswith(".py"):
        return _load_module_py(module_id, path)
    with open(path, "rb") as handle:
        data = handle.read()
    hashes[os.path.realpath(path)] = hashlib.sha256(data).hexdigest()
    spec = importlib.util.spec_from_file_location(module_id, path)
    module = importlib.util.module_from_spec(spec)
    exec(compile(data, path, "exec", dont_inherit=True), module.__dict__)
    return module

if pyfiles is not None:
    pyfiles.load_module_py = load_module_py
config = Config(ini) if ini else Config()
if location:
    config.set_main_option("script_location", location.replace("%", "%%"))
scripts = ScriptDirectory.from_config(config)

def ids(value):
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]

revisions, problems = [], []
def record(script):
    module = script.module
    revisions.append({
        "revision": str(script.revision),
        "down_revisions": ids(module.down_revision),
        "depends_on": ids(getattr(module, "depends_on", None)),
        "branch_labels": ids(getattr(module, "branch_labels", None)),
        "docstring": module.__doc__ if isinstance(module.__doc__, str) else "",
        "path": str(script.path),
    })

try:
    locations = [Path(v) for v in scripts._version_locations if Path(v).exists()]
    listing = Script._list_py_dir
    load = Script._from_path
except AttributeError:
    for script in scripts._load_revisions():
        record(script)
else:
    seen = set()
    for folder in locations:
        for path in listing(scripts, folder):
            real = Path(path).resolve()
            if real in seen:
                continue
            seen.add(real)
            try:
                script = load(scripts, real)
                if script is not None:
                    record(script)
            except BaseException as exc:
                problems.append(f"{real}: {type(exc).__name__}: {exc}")
with open(out, "w", encoding="utf-8") as handle:
    json.dump({"revisions": revisions, "problems": problems, "hashes": hashes}, handle)
"""


def load_history_with_alembic(
    script_location: Path | None = None,
    *,
    alembic_ini: Path | None = None,
    python: str = sys.executable,
    timeout: float = ALEMBIC_TIMEOUT,
) -> LoadedHistory:
    """Return the graph as Alembic's own loader sees it, from a subprocess of `python`."""
    # For projects whose identifiers are not literals. The revision files are executed, so
    # this belongs in the worker, never in a web request.
    settings = read_settings(script_location, alembic_ini=alembic_ini)
    entry = _entry(script_location, alembic_ini)
    with entry.lock:
        files, notes, scan_problems, _ = _scan(settings)
        stamp = fingerprint_files(files)
        cached = entry.alembic.get((python, stamp))
        if cached is not None:
            return cached
        ini = str(Path(alembic_ini).absolute()) if alembic_ini else ""
        location = "" if alembic_ini and script_location is None else str(settings.script_location)
        revisions: list[Revision] = []
        problems = list(settings.problems)
        hashes: dict[str, str] = {}
        ran = False
        with tempfile.TemporaryDirectory(prefix="alembic-history-") as tmp:
            out = os.path.join(tmp, "history.json")
            cwd = (
                str(Path(alembic_ini).absolute().parent)
                if alembic_ini
                else str(settings.script_location.parent)
            )
            try:
                done = subprocess.run(
                    [python, "-c", _ALEMBIC_LOADER, ini, location, out],
                    cwd=cwd,
                    # The revision files run here: they see paths and locale, no secret.
                    env=allowed_environment(os.environ),
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                problems.append(f"Alembic's loader did not run: {exc}")
                done = None
            if done is not None and done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                problems.append(f"Alembic's loader failed: {tail[0]}")
            elif done is not None:
                with open(out, encoding="utf-8") as handle:
                    answer = json.load(handle)
                problems.extend(answer["problems"])
                revisions = [_from_alembic(item) for item in answer["revisions"]]
                # Missing from an Alembic without pyfiles.load_module_py: then no plan is made.
                hashes = {str(k): str(v) for k, v in (answer.get("hashes") or {}).items()}
                ran = True
        graph = Graph(revisions, problems, notes=notes + scan_problems)
        history = LoadedHistory(
            graph=graph,
            fingerprint=stamp,
            script_location=settings.script_location,
            version_locations=settings.version_locations,
            problems=tuple(graph.problems),
            file_hashes=hashes,
        )
        if ran:
            # Only the newest answer per interpreter is asked for again.
            for key in [key for key in entry.alembic if key[0] == python]:
                del entry.alembic[key]
            entry.alembic[(python, stamp)] = history
        return history


def _from_alembic(item: dict[str, Any]) -> Revision:
    docstring = (item.get("docstring") or "").strip()
    created = _CREATE_DATE.search(docstring)
    return Revision(
        revision=item["revision"],
        down_revisions=tuple(item["down_revisions"]),
        depends_on=tuple(item["depends_on"]),
        branch_labels=tuple(item["branch_labels"]),
        message=re.split("\n\n", docstring)[0],
        docstring=docstring,
        create_date=created.group(1) if created else None,
        path=item["path"],
    )
