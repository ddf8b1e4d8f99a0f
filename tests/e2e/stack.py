"""A live dashboard for the browser journeys: its own database, config, users, server and worker."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tests.databases import postgres_database

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "migrations_project"
SAMPLE_INI = SAMPLE / "alembic.ini"
HEAD = "6c0a8d3f5e94"
MERGE = "9e4f1b7a2c68"
BRANCH_POINT = "c94a0b3e6d12"
PEOPLE = {
    "lead": "viewer",
    "olga": "operator",
    "alan": "approver",
    "root": "admin",
}
# Each revision of the sample project sleeps this long in the worker's runs, so a page left open
# sees the run in progress; short, because offline SQL renders every step too.
STEP_SLEEP = "0.3"
START_TIMEOUT = 40.0
UNFINISHED = ("requested", "approved", "queued")


class StackFailed(Exception):
    """The live stack could not be set up or a command it ran failed."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_password(url: str, password: str) -> str:
    """Return the URL with this password (PostgreSQL's trust auth accepts any)."""
    return make_url(url).set(password=password).render_as_string(hide_password=False)


def alembic_steps(log: str) -> list[str]:
    """Return the revisions an Alembic run stepped through, in order, from its log lines."""
    steps = []
    for line in log.splitlines():
        for verb in ("Running upgrade", "Running downgrade"):
            if verb not in line:
                continue
            # "Running upgrade A, B -> C, message" runs C; "Running downgrade C -> A, B" undoes C.
            before, after = line.split(verb, 1)[1].split("->", 1)
            ran = after if verb == "Running upgrade" else before
            steps.append(ran.split(",", 1)[0].strip())
    return steps


@dataclass
class Target:
    """One environment's database as the test set it up."""

    name: str
    url: str
    password: str | None


@dataclass
class LiveStack:
    """A running dashboard (gunicorn, DEBUG=0) and one worker, with their files and secrets."""

    folder: Path
    env: dict[str, str]
    targets: dict[str, Target]
    user_password: str
    base_url: str = ""
    orders: dict[str, list[str]] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def never_shown(self) -> dict[str, str]:
        """Return every secret that must never reach a page, an API answer or a log line."""
        found = {
            f"{t.name} database password": t.password for t in self.targets.values() if t.password
        }
        found["sign-in password"] = self.user_password
        found["SECRET_KEY"] = self.env["SECRET_KEY"]
        return found

    def url(self, path: str) -> str:
        """Return the absolute URL of a path on the live server."""
        return self.base_url + path

    def manage(self, *args: str) -> str:
        """Run a management command against the live stack's database; return its stdout."""
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        with (self.folder / "commands.log").open("a", encoding="utf-8") as out:
            out.write(done.stdout + done.stderr)
        if done.returncode != 0:
            raise StackFailed(f"manage.py {args[0]} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def action(self, action_id: int) -> dict[str, Any]:
        """Return `action show --json` for an action: what the database says, not the page."""
        document: dict[str, Any] = json.loads(
            self.manage("action", "show", str(action_id), "--json")
        )
        return document

    def request_upgrade(
        self, environment: str, user: str, target: str, *, queue_behind: int | None = None
    ) -> dict[str, Any]:
        """Request an upgrade from the command line (its SQL is prepared at once); return it."""
        behind = ["--queue-behind", str(queue_behind)] if queue_behind is not None else []
        out = self.manage(
            "action",
            "request",
            "--env",
            environment,
            "--upgrade",
            target,
            "--user",
            user,
            "--reason",
            "set up by the browser journey",
            "--json",
            *behind,
        )
        document: dict[str, Any] = json.loads(out)
        return document

    def actions(self) -> list[dict[str, Any]]:
        """Return every action the dashboard's database holds."""
        documents: list[dict[str, Any]] = json.loads(self.manage("action", "list", "--json"))
        return documents

    def heads(self, environment: str) -> tuple[str, ...]:
        """Read an environment's version table directly, as the test's own witness."""
        engine = sa.create_engine(self.targets[environment].url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                if not sa.inspect(conn).has_table("alembic_version"):
                    return ()
                rows = conn.scalars(sa.text("SELECT version_num FROM alembic_version"))
                return tuple(sorted(rows))
        finally:
            engine.dispose()

    def place(self, **revisions: str) -> None:
        """Move environments to revisions by running the sample project's Alembic.

        Their snapshots stay as they were: a journey that reads states presses Refresh, as a
        user would after changing a database behind the dashboard's back. Earlier journeys'
        unfinished actions there are cancelled: a request beside one would be refused.
        """
        for action in self.actions():
            if action["environment"] in revisions and action["status"] in UNFINISHED:
                self.manage("action", "cancel", str(action["id"]), "--user", "root")
        script = ScriptDirectory.from_config(Config(str(SAMPLE_INI)))
        moves = []
        for name, rev in revisions.items():
            heads = self.heads(name)
            if heads == (rev,):
                continue
            below = {r.revision for r in script.revision_map.iterate_revisions(heads, "base")}
            verb = "downgrade" if rev in below else "upgrade"
            moves.append((self.targets[name].url, verb, rev))
        with ThreadPoolExecutor() as pool:
            list(pool.map(lambda move: run_alembic(*move), moves))

    def stop(self) -> None:
        """Stop the server and the worker (they flush their logs), killing them if they hang."""
        for proc in self.processes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.processes.clear()


def run_alembic(url: str, *args: str) -> str:
    """Run the sample project's Alembic for real; return its log output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATIONS_PROJECT_")}
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(SAMPLE_INI), "-x", f"url={url}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise StackFailed(f"alembic {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stderr


def alembic_orders(folder: Path) -> dict[str, list[str]]:
    """Return the order Alembic itself runs the journeys' plans in, from real runs on SQLite."""
    url = f"sqlite:///{folder / 'witness.db'}"
    run_alembic(url, "upgrade", BRANCH_POINT)
    up = alembic_steps(run_alembic(url, "upgrade", "heads"))
    down = alembic_steps(run_alembic(url, "downgrade", BRANCH_POINT))
    return {"upgrade": up, "downgrade": down}


def _server_env(folder: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MIGRATIONS_PROJECT_", "DJANGO_", "DASHBOARD_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="dashboard.settings",
        DATABASE_URL=f"sqlite:///{folder / 'dash.sqlite3'}",
        DASHBOARD_CONFIG=str(folder / "dashboard.toml"),
        DASHBOARD_VAR_DIR=str(folder),
        # Production settings: no DEBUG, a real key, whitenoise over collectstatic's output.
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(40),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        SECURE_COOKIES="0",  # plain http on the loopback
        STATIC_ROOT=str(folder / "static"),
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    return env


def _write_config(path: Path, targets: dict[str, Target]) -> None:
    policy = {"dev": 0, "staging": 1, "prod": 1}
    lines = [
        "[projects.blog]",
        f"script_location = {json.dumps(str(SAMPLE))}",
        'description = "The blog API schema: users, posts, votes."',
        "",
    ]
    for order, (name, target) in enumerate(targets.items(), start=1):
        lines += [f"[environments.{name}]", 'project = "blog"', f"order = {order}"]
        if name == "prod":
            # prod's URL comes from the environment, as in production.
            lines.append('url_env = "E2E_PROD_DATABASE_URL"')
        else:
            lines.append(f"url = {json.dumps(target.url)}")
        lines += [f"approvals_required = {policy[name]}", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def _start(
    stack: LiveStack, name: str, argv: list[str], env: dict[str, str]
) -> subprocess.Popen[bytes]:
    log = stack.folder / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so stop() reaches gunicorn's workers too
        )
    stack.processes.append(proc)
    return proc


def _wait_healthy(stack: LiveStack, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            break
        try:
            with urllib.request.urlopen(stack.url("/healthz"), timeout=2) as answer:  # noqa: S310
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass  # not listening yet, or its database not ready: ask again
        time.sleep(0.1)
    tail = (stack.folder / "server.log").read_text(errors="replace")[-3000:]
    raise StackFailed(f"the dashboard did not answer /healthz in time:\n{tail}")


def _run_all(commands: Iterable[tuple[list[str], dict[str, str]]], folder: Path) -> None:
    """Run independent commands at once (two cores: setup time is most of the budget)."""
    procs = []
    for argv, env in commands:
        out = (folder / "setup.log").open("ab")
        procs.append((argv, out, subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=out)))
    failures = []
    for argv, out, proc in procs:
        code = proc.wait(timeout=120)
        out.close()
        if code != 0:
            failures.append(f"{' '.join(argv[1:4])}: exit {code}")
    if failures:
        tail = (folder / "setup.log").read_text(errors="replace")[-3000:]
        raise StackFailed("setup failed: " + "; ".join(failures) + "\n" + tail)


@contextmanager
def live_stack(folder: Path) -> Iterator[LiveStack]:
    """Set up and run the dashboard on throwaway databases; tear everything down afterwards."""
    with ExitStack() as cleanup:
        passwords = {name: f"E2e-Pw-{secrets.token_hex(6)}" for name in ("staging", "prod")}
        targets = {
            "dev": Target("dev", f"sqlite:///{folder / 'dev.db'}", None),
            "staging": Target(
                "staging",
                with_password(cleanup.enter_context(postgres_database()), passwords["staging"]),
                passwords["staging"],
            ),
            "prod": Target(
                "prod",
                with_password(cleanup.enter_context(postgres_database()), passwords["prod"]),
                passwords["prod"],
            ),
        }
        port = free_port()
        env = _server_env(folder)
        env["E2E_PROD_DATABASE_URL"] = targets["prod"].url
        stack = LiveStack(
            folder=folder,
            env=env,
            targets=targets,
            user_password=f"Journey-{secrets.token_hex(8)}",
            base_url=f"http://127.0.0.1:{port}",
        )
        _write_config(folder / "dashboard.toml", targets)
        witness = cleanup.enter_context(ThreadPoolExecutor(1)).submit(alembic_orders, folder)
        alembic_env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATIONS_")}
        alembic = [sys.executable, "-m", "alembic", "-c", str(SAMPLE_INI), "-x"]
        manage = [sys.executable, "manage.py"]
        _run_all(
            [
                ([*manage, "migrate", "--no-input", "-v", "0"], env),
                ([*manage, "collectstatic", "--no-input", "-v", "0"], env),
                ([*alembic, f"url={targets['dev'].url}", "upgrade", "heads"], alembic_env),
                ([*alembic, f"url={targets['staging'].url}", "upgrade", BRANCH_POINT], alembic_env),
                ([*alembic, f"url={targets['prod'].url}", "upgrade", "heads"], alembic_env),
            ],
            folder,
        )
        cleanup.callback(stack.stop)
        server = _start(
            stack,
            "server",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "dashboard.wsgi",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
                "--threads",
                "4",
                "--preload",
                "--access-logfile",
                "-",
            ],
            env,
        )
        _start(
            stack,
            "worker",
            [*manage, "worker", "--interval", "0.2", "--no-startup-delay", "--no-reload"],
            {**env, "MIGRATIONS_PROJECT_SLEEP": STEP_SLEEP},
        )
        # While they start: the people (`adduser` in one interpreter: Django's start-up is most
        # of its cost) and a first reading of every environment.
        people = "; ".join(f"call_command('adduser', {n!r}, role={r!r})" for n, r in PEOPLE.items())
        _run_all(
            [
                (
                    [
                        sys.executable,
                        "-c",
                        f"import django; django.setup(); "
                        f"from django.core.management import call_command; {people}",
                    ],
                    {**env, "DASHBOARD_PASSWORD": stack.user_password},
                ),
                ([*manage, "status"], env),
            ],
            folder,
        )
        _wait_healthy(stack, server)
        stack.orders = witness.result()
        yield stack
