"""Time reading a generated revision history against Alembic's own loader, in one run.

Usage: .venv/bin/python bench/bench_graph.py [--revisions 10000] [--linear] [--body-lines 0]
       [--no-pages]

The graph page itself is timed through Django's test client (production settings) against
the product's own trivial view, /healthz, in the same run: the first paint once the files
are read and the history drawn, the first request after a change (order and lanes drawn
again), and a repeat.

Prints wall and CPU times, the ratios the targets are stated in, and each target beside
it; a target is judged on wall time. Alembic is timed in fresh subprocesses because its
loader executes every file: its first run compiles them and writes bytecode caches, later
runs reuse those, and the fastest (cached) run is the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashboard import scripts  # noqa: E402
from dashboard.drawing.lanes import layout  # noqa: E402
from tests.genhistory import generate  # noqa: E402

ALEMBIC_TIMER = r"""
import json, sys, time
from alembic.config import Config
from alembic.script import ScriptDirectory
wall, cpu = time.perf_counter(), time.process_time()
script = ScriptDirectory.from_config(Config(sys.argv[1]))
heads = script.get_heads()
load_wall, load_cpu = time.perf_counter() - wall, time.process_time() - cpu
walked = [s.revision for s in script.walk_revisions()]
print(json.dumps({
    "load": [load_wall, load_cpu],
    "total": [time.perf_counter() - wall, time.process_time() - cpu],
    "heads": sorted(heads), "order": walked,
}))
"""


@dataclass(frozen=True)
class Timing:
    """Wall-clock and CPU seconds of one measured run."""

    wall: float
    cpu: float

    def over(self, other: Timing) -> str:
        return f"{self.wall / other.wall:.3f} / {self.cpu / other.cpu:.3f}"


def best_of(repeat: int, run: Callable[[], Any], setup: Callable[[], Any] = lambda: None):
    """Return the fastest (by wall time) of `repeat` timed calls, and the last result."""
    best = Timing(float("inf"), float("inf"))
    result = None
    for _ in range(repeat):
        setup()
        wall, cpu = time.perf_counter(), time.process_time()
        result = run()
        timing = Timing(time.perf_counter() - wall, time.process_time() - cpu)
        if timing.wall < best.wall:
            best = timing
    return best, result


def time_alembic(ini: Path, runs: int) -> list[dict[str, Any]]:
    """Return Alembic's load and walk timings, one per fresh subprocess."""
    answers = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", ALEMBIC_TIMER, str(ini)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ini.parent,
        )
        answers.append(json.loads(done.stdout))
    return answers


def render_window(history: scripts.LoadedHistory, count: int) -> list[dict[str, Any]]:
    """Lay out the graph and build the first window of rows a page would render."""
    graph = history.graph
    return [
        {
            "revision": row.revision,
            "message": graph.revisions[row.revision].message,
            "labels": graph.labels_of(row.revision),
            "is_head": graph.is_head(row.revision),
            "is_merge_point": graph.is_merge_point(row.revision),
            "lane": row.lane,
            "width": row.width,
            "segments": row.segments(),
        }
        for row in layout(graph).rows(0, count)
    ]


def page_client(tmp: Path, ini: Path) -> Any:
    """Set Django up on a throwaway database and config naming the history; return a client.

    Production settings (DEBUG off, static files from collectstatic's manifest), so templates
    render as a deployed dashboard renders them.
    """
    config = tmp / "dashboard.toml"
    config.write_text(f"[projects.big]\nalembic_ini = {json.dumps(str(ini))}\n", encoding="utf-8")
    os.environ.update(
        DJANGO_SETTINGS_MODULE="dashboard.settings",
        DATABASE_URL=f"sqlite:///{tmp / 'dash.sqlite3'}",
        DASHBOARD_CONFIG=str(config),
        DASHBOARD_VAR_DIR=str(tmp),
        DEBUG="0",
        DASHBOARD_INSECURE_DEV_KEY="1",
        ALLOWED_HOSTS="testserver",
        STATIC_ROOT=str(tmp / "static"),
        LOG_LEVEL="WARNING",
    )
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    call_command("migrate", verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)
    call_command("adduser", "bench", role="viewer", password=secrets.token_urlsafe(16), verbosity=0)
    client = Client()
    client.force_login(get_user_model().objects.get(username="bench"))
    return client


def time_pages(client: Any, repeat: int) -> dict[str, Timing]:
    """Time the graph page's first paint three ways, and /healthz, in this process."""
    from dashboard.selectors.graph import loaded

    url = "/projects/big/graph"

    def get(path: str) -> Callable[[], Any]:
        def run() -> Any:
            response = client.get(path)
            assert response.status_code == 200, (path, response.status_code)
            return response

        return run

    def undrawn() -> None:
        # The files are read and cached; the page's order, lanes and rows are not.
        with loaded._drawn_lock:
            loaded._drawn.clear()

    def unshown() -> None:
        with loaded._drawn_lock:
            for drawn in loaded._drawn.values():
                drawn.shown.clear()

    get(url)()  # reads the files once (Alembic-free static parse), as a server's first hit does
    timings = {
        "healthz": best_of(max(repeat, 5), get("/healthz"))[0],
        "undrawn": best_of(repeat, get(url), undrawn)[0],
        "unshown": best_of(repeat, get(url), unshown)[0],
        "repeat": best_of(max(repeat, 5), get(url))[0],
    }
    return timings


def show(name: str, timing: Timing, ratio: str = "", target: str = "", ok: bool | None = None):
    verdict = "" if ok is None else ("ok" if ok else "MISSED")
    print(
        f"{name:<46} {timing.wall * 1000:>9.1f} {timing.cpu * 1000:>9.1f}"
        f"  {ratio:>15}  {target:<18} {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revisions", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each of our timings")
    parser.add_argument("--alembic-runs", type=int, default=2)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument(
        "--linear", action="store_true", help="an unbranched history, where Alembic's walk is cheap"
    )
    parser.add_argument(
        "--body-lines", type=int, default=0, help="column operations in each upgrade/downgrade"
    )
    parser.add_argument(
        "--no-pages", action="store_true", help="skip timing the graph page through Django"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-graph-") as tmp:
        ini = generate(
            Path(tmp),
            revisions=args.revisions,
            seed=args.seed,
            linear=args.linear,
            body_lines=args.body_lines,
        )
        shape = "linear" if args.linear else "branched"
        print(
            f"history: {args.revisions} {shape} revisions, {args.body_lines} operations per"
            f" upgrade/downgrade (seed {args.seed}) in {tmp}"
        )

        runs = time_alembic(ini, max(args.alembic_runs, 1))
        first = runs[0]
        fastest = min(runs, key=lambda a: a["total"][0])
        alembic_first = Timing(*first["total"])
        alembic_load = Timing(*fastest["load"])
        alembic = Timing(*fastest["total"])

        def load() -> scripts.LoadedHistory:
            return scripts.load_history(alembic_ini=ini)

        def load_and_walk() -> scripts.LoadedHistory:
            history = load()
            history.graph.topological()
            return history

        cold, history = best_of(args.repeat, load_and_walk, scripts.clear_cache)
        cold_load, _ = best_of(args.repeat, load, scripts.clear_cache)
        reference = load()
        warm, again = best_of(max(args.repeat, 5), load)

        fresh: list[scripts.LoadedHistory] = []

        def fresh_graph() -> None:
            scripts.clear_cache()
            fresh[:] = [load_and_walk()]  # the walk is part of the cold load above

        window_timing, window = best_of(
            args.repeat, lambda: render_window(fresh[0], args.window), fresh_graph
        )

        graph = history.graph
        same = fastest["heads"] == sorted(graph.heads) and fastest["order"] == graph.topological()
        merges = sum(graph.is_merge_point(r) for r in graph.revisions)
        print(
            f"graph: {len(graph)} revisions, {len(graph.heads)} heads, {len(graph.bases)} bases,"
            f" {merges} merge points; same heads and walk order as Alembic: {same};"
            f" problems: {len(graph.problems)}"
        )
        print()
        print(f"{'measure':<46} {'wall ms':>9} {'cpu ms':>9}  {'ratio wall/cpu':>15}  target")
        show("Alembic, first run (compiles every file)", alembic_first)
        show(f"Alembic, fastest of {len(runs)}: from_config + map", alembic_load)
        show(f"Alembic, fastest of {len(runs)}: + walk_revisions()", alembic)
        show(
            "ours cold: load_history + topological()",
            cold,
            cold.over(alembic),
            "<= 0.25 of Alembic",
            cold.wall / alembic.wall <= 0.25,
        )
        show("ours cold, vs Alembic's first run", cold, cold.over(alembic_first))
        show("ours cold: load_history only, vs map only", cold_load, cold_load.over(alembic_load))
        show(
            "ours warm: load_history, files unchanged",
            warm,
            warm.over(cold),
            "<= 0.02 of cold",
            warm.wall / cold.wall <= 0.02 and again is reference,
        )
        show(
            f"layout + first {len(window)} render-ready rows",
            window_timing,
            "",
            "<= 100 ms",
            window_timing.wall <= 0.1,
        )
        if args.no_pages:
            return
        pages = time_pages(page_client(Path(tmp), ini), args.repeat)
        health = pages["healthz"]
        print()
        print("the graph page (Django test client, DEBUG off; ratio against /healthz, same run)")
        show("GET /healthz", health)
        show(
            "graph page, files read, never drawn",
            pages["undrawn"],
            pages["undrawn"].over(health),
        )
        show(
            "graph page first paint (drawn, no row kept)",
            pages["unshown"],
            pages["unshown"].over(health),
            "<= 100 ms",
            pages["unshown"].wall <= 0.1,
        )
        show(
            "graph page again (rows kept)",
            pages["repeat"],
            pages["repeat"].over(health),
            "<= 100 ms",
            pages["repeat"].wall <= 0.1,
        )


if __name__ == "__main__":
    main()
