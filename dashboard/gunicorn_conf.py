"""Gunicorn settings: `gunicorn -c dashboard/gunicorn_conf.py --bind ... --workers N`.

They put prometheus_client in multi-process mode, so /metrics adds up the request counts of
every worker. Each server needs a folder of its own in PROMETHEUS_MULTIPROC_DIR: it is emptied
at start-up. Left unset, a fresh temporary folder is made and removed again at exit.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

wsgi_app = "dashboard.wsgi:application"

# Set before any worker imports prometheus_client: it picks its storage when imported. The
# folder made is remembered apart, since gunicorn re-reads this file on SIGHUP, and by then
# PROMETHEUS_MULTIPROC_DIR is set: it alone cannot tell a made folder from a named one.
MADE = "DASHBOARD_MADE_MULTIPROC_DIR"
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="dashboard-metrics-")
    os.environ[MADE] = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def on_starting(server: Any) -> None:
    """Empty the folder: counts that an earlier run left there would be added to this run's."""
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob("*.db"):
        leftover.unlink()


def child_exit(server: Any, worker: Any) -> None:
    """Tell prometheus_client a worker is gone: its counts stay summed, its live values go."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    """Remove the temporary folder this config made (never one the environment named)."""
    made = os.environ.get(MADE)
    if made and made == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(made, ignore_errors=True)
