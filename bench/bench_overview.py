"""Benchmark the overview page against `/healthz` on real gunicorn, under a real load generator.

Run: .venv/bin/python bench/bench_overview.py [--environments 10] [--seconds 4]

Creates a throwaway dashboard (a SQLite file, migrated with `manage.py migrate`), a config of
--environments SQLite environments of the sample project read once for real, then --snapshots
past snapshots and --actions past actions so the history is large. It prints the overview's
query count and in-process render time at 100 and at --snapshots history rows, then starts
`gunicorn dashboard.wsgi` on 127.0.0.1 and loads `/healthz` and `/` (signed in) in turn with
`wrk` (Debian's; installed with apt-get when missing), and prints requests/s, p50 latency, CPU
per request and the ratio overview / healthz, all measured in this run. Everything lives in a
temporary folder that goes at the end (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.statusenv import EARLY, HEAD, MID, empty_sqlite, write_versions  # noqa: E402

if TYPE_CHECKING:
    from django.test import Client

GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
SAMPLE = ROOT / "migrations_project"
SMALL_HISTORY = 100
TICKS = os.sysconf("SC_CLK_TCK")


def write_config(folder: Path, count: int) -> Path:
    """Write a config of count SQLite environments of the sample project at assorted heads."""
    lines = ["[projects.blog]", f'script_location = "{SAMPLE}"', ""]
    heads = [[HEAD], [MID], [EARLY], []]
    for n in range(count):
        url = empty_sqlite(folder / f"env{n}.db")
        if heads[n % len(heads)]:
            write_versions(url, heads[n % len(heads)])
        lines += [f"[environments.env{n:02d}]", 'project = "blog"', f'url = "{url}"']
        lines += [f"order = {n}", f'description = "bench environment {n}"', ""]
    path = folder / "dashboard.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def add_history(snapshots: int, actions: int) -> None:
    """Store past snapshots and finished actions older than every environment's latest read."""
    from django.utils import timezone

    from dashboard.models import Action, Snapshot

    # The newest snapshot of each environment, which every past one copies.
    latest = list(
        {snap.environment: snap for snap in Snapshot.objects.order_by("read_at")}.values()
    )
    have = Snapshot.objects.count() - len(latest)
    start = timezone.now() - timedelta(days=1)
    rows = []
    for n in range(have, snapshots):
        model = latest[n % len(latest)]
        rows.append(
            Snapshot(
                environment=model.environment,
                project=model.project,
                heads=model.heads,
                state=model.state,
                pending=model.pending,
                script_heads=model.script_heads,
                messages=model.messages,
                branch_labels=model.branch_labels,
                detail=model.detail,
                latency_ms=model.latency_ms,
                read_at=start - timedelta(seconds=n),
                changed=n % 50 == 0,
            )
        )
    Snapshot.objects.bulk_create(rows, batch_size=500)
    have = Action.objects.count()
    envs = sorted({snap.environment for snap in latest})
    Action.objects.bulk_create(
        [
            Action(
                environment=envs[n % len(envs)],
                project="blog",
                direction="upgrade",
                target=HEAD,
                target_heads=[HEAD],
                from_heads=[MID],
                plan=[HEAD],
                fingerprint="0" * 64,
                plan_hash="0" * 64,
                status=Action.Status.SUCCEEDED,
                requested_by_name="olga",
                finished_at=start - timedelta(minutes=n),
            )
            for n in range(have, actions)
        ],
        batch_size=500,
    )


def measure_in_process(client: Client, rounds: int) -> tuple[int, float]:
    """Render the overview with Django's test client: its query count and median CPU ms."""
    from django.db import connection

    queries: list[str] = []

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        queries.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        response = client.get("/")
    assert response.status_code == 200, response.status_code
    times = []
    for _ in range(rounds):
        started = time.process_time()
        client.get("/")
        times.append(time.process_time() - started)
    return len(queries), statistics.median(times) * 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch(port: int, path: str, cookie: str = "") -> tuple[int, str]:
    """GET a path from the loopback server, without following redirects; return status and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def start_gunicorn(port: int, workers: int) -> subprocess.Popen[bytes]:
    """Start gunicorn on 127.0.0.1:port and wait (at most 60 s) until /healthz answers."""
    proc = subprocess.Popen(
        [str(GUNICORN), "dashboard.wsgi", "--workers", str(workers)]
        + ["--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}")
        try:
            if fetch(port, "/healthz")[0] == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("gunicorn did not answer /healthz within 60 s")


def worker_cpu(master: int) -> float:
    """Return the CPU seconds gunicorn's worker processes have used so far."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    total = 0
    for pid in children:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def wrk(url: str, connections: int, seconds: float, cookie: str) -> tuple[float, float, str]:
    """Load url with wrk; return requests/s, p50 ms and wrk's complaint about answers, if any."""
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
    if cookie:
        command += ["-H", f"Cookie: {cookie}"]
    done = subprocess.run(
        [*command, url], capture_output=True, text=True, check=True, timeout=seconds + 60
    )
    rate = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\b", done.stdout, re.MULTILINE)
    if not rate or not p50:
        raise RuntimeError(f"cannot read wrk's output:\n{done.stdout}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p50.group(2)]
    bad = re.search(r"(Non-2xx or 3xx responses: \d+|Socket errors: .*)", done.stdout)
    return float(rate.group(1)), float(p50.group(1)) * scale, bad.group(1) if bad else ""


def cpu_ratio(results: dict[str, list[tuple[float, float, float]]]) -> float:
    """Return the median worker CPU per request of the overview over that of /healthz."""
    return statistics.median(r[2] for r in results["overview"]) / statistics.median(
        r[2] for r in results["healthz"]
    )


def ensure_wrk() -> None:
    """Install Debian's wrk when it is missing (the bench runs as root in the dev container)."""
    if shutil.which("wrk"):
        return
    print("installing wrk (apt-get install -y wrk)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "wrk"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        timeout=600,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--environments", type=int, default=10)
    parser.add_argument("--snapshots", type=int, default=10_000, help="past snapshots stored")
    parser.add_argument("--actions", type=int, default=1_000, help="past actions stored")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--connections", type=int, default=20, help="wrk connections")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per URL, interleaved")
    args = parser.parse_args()

    # SIGTERM unwinds like Ctrl-C so the finally blocks stop gunicorn and remove the folder.
    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="bench_overview_") as tmp:
        run(Path(tmp), args)


def run(folder: Path, args: argparse.Namespace) -> None:
    """Set the dashboard up, count queries at two history sizes, then load it over HTTP."""
    started = time.perf_counter()
    os.environ.update(
        {
            "DATABASE_URL": f"sqlite:///{folder / 'dashboard.sqlite3'}",
            "DASHBOARD_CONFIG": str(write_config(folder, args.environments)),
            "DASHBOARD_VAR_DIR": str(folder),
            "STATIC_ROOT": str(folder / "static"),
            "DJANGO_SETTINGS_MODULE": "dashboard.settings",
            "DASHBOARD_INSECURE_DEV_KEY": "1",
            "DEBUG": "0",
            "LOG_LEVEL": "WARNING",
        }
    )
    for command in (["migrate", "--no-input"], ["collectstatic", "--no-input"]):
        subprocess.run(
            [sys.executable, "manage.py", *command, "-v", "0"], cwd=ROOT, check=True, timeout=300
        )
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.test import Client

    from dashboard.services import status, users

    status.status_refresh()
    users.user_set_role(username="lead", role="viewer")
    client = Client(HTTP_HOST="127.0.0.1")  # an allowed host, without the test runner's setup
    client.force_login(get_user_model().objects.get(username="lead"))
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    print(
        f"set up the dashboard and {args.environments} environments"
        f" in {time.perf_counter() - started:.1f} s"
    )

    print(f"\n(a) the overview in process (Django test client), {args.environments} environments")
    print("    past snapshots   past actions   queries   CPU per render (median of 50)")
    counts = []
    for snapshots, actions in (
        (SMALL_HISTORY, SMALL_HISTORY // 10),
        (args.snapshots, args.actions),
    ):
        add_history(snapshots, actions)
        queries, ms = measure_in_process(client, 50)
        counts.append(queries)
        print(f"    {snapshots:14d} {actions:14d} {queries:9d} {ms:15.1f} ms")
    same = "the same" if counts[0] == counts[-1] else "MORE, it grows with history"
    print(f"    (target: the same query count at both sizes; it is {same})")

    from django.db import connections

    connections.close_all()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_gunicorn(port, args.workers)
    try:
        code, body = fetch(port, "/", cookie)
        if code != 200 or 'id="env-env00"' not in body:
            raise RuntimeError(f"the signed-in overview answered {code}, not the matrix")
        for url, with_cookie in ((f"{base}/healthz", ""), (f"{base}/", cookie)):
            wrk(url, args.connections, 1, with_cookie)  # warm both workers up
        results: dict[str, list[tuple[float, float, float]]] = {"healthz": [], "overview": []}
        for _ in range(args.rounds):
            for name, url, with_cookie in (
                ("healthz", f"{base}/healthz", ""),
                ("overview", f"{base}/", cookie),
            ):
                cpu = worker_cpu(server.pid)
                rate, p50, bad = wrk(url, args.connections, args.seconds, with_cookie)
                if bad:
                    raise RuntimeError(f"{name}: wrk saw {bad}")
                per_request = (worker_cpu(server.pid) - cpu) / (rate * args.seconds)
                results[name].append((rate, p50, per_request * 1000))
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(
        f"\n(b) gunicorn, {args.workers} workers, wrk {args.connections} connections,"
        f" {args.rounds} x {args.seconds:g} s per URL interleaved (median), history as in (a)"
    )
    print("    page        requests/s   p50 latency   worker CPU / request")
    medians: dict[str, float] = {}
    for name, rows in results.items():
        rate, p50, cpu = (statistics.median(row[i] for row in rows) for i in range(3))
        medians[name] = rate
        print(f"    {name:9s} {rate:12.0f} {p50:10.1f} ms {cpu:15.1f} ms")
    ratio = medians["overview"] / medians["healthz"]
    print(f"\n    ratio overview / healthz:  {ratio:5.2f}  (target >= 0.5)")
    print(f"    worker CPU per request, overview / healthz:  {cpu_ratio(results):5.2f}x")
    print(
        "    (wrk, gunicorn and the machine's other load share the cores; CPU / request comes"
        " from the workers' /proc times over each run)"
    )


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
