"""/metrics: gauges from the dashboard's tables, who may read them, and two gunicorn workers."""

from __future__ import annotations

import http.client
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from dashboard.models import Action, SchemaCheck
from dashboard.selectors import drift as drift_selectors
from dashboard.selectors import status as status_selectors
from dashboard.selectors.metrics import STATES
from dashboard.services import queue, status, tokens, users, workers
from dashboard.views import metrics as metrics_views
from tests.statusenv import (
    HEAD,
    MID,
    PASSWORD,
    ROOT,
    alembic,
    empty_sqlite,
    write_config,
    write_versions,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# An environment whose URL holds a password; nothing listens on the port, so it is unreachable.
REPORTS_URL = f"postgresql://report:{PASSWORD}@127.0.0.1:9/reports"


def parse(body: str) -> Samples:
    """Return every sample of a text exposition by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """Return the sample with exactly these labels, or None."""
    return samples.get((name, frozenset(labels.items())))


def states_of(samples: Samples, environment: str) -> dict[str, float]:
    """Return an environment's state series: state -> 0 or 1."""
    return {
        dict(labels)["state"]: v
        for (name, labels), v in samples.items()
        if name == "dashboard_environment_state" and dict(labels)["environment"] == environment
    }


def fleet_config(path: Path, folder: Path, environments: dict[str, dict[str, Any]]) -> Path:
    """Write the config with a fleet of two members beside the environments."""
    config = write_config(path, environments)
    template = f"sqlite:///{folder}/tenant-{{name}}.db"
    fleet = f'project = "blog"\nurl_template = "{template}"\nnames = ["acme", "globex"]\n'
    config.write_text(f"{config.read_text()}\n[fleets.tenants]\n{fleet}", encoding="utf-8")
    return config


# --- in process ------------------------------------------------------------------------------


@dataclass
class Site:
    token: str
    client: Client


@pytest.fixture
def site(settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    """Staging behind, dev uninitialized, reports unreachable, two members; a viewer's token."""
    staging = empty_sqlite(tmp_path / "staging.db")
    write_versions(staging, [MID])
    write_versions(empty_sqlite(tmp_path / "tenant-acme.db"), [HEAD])
    write_versions(empty_sqlite(tmp_path / "tenant-globex.db"), [MID])
    monkeypatch.setenv("REPORTS_DATABASE_URL", REPORTS_URL)
    envs = {
        "dev": {"project": "blog", "url": empty_sqlite(tmp_path / "dev.db")},
        "staging": {"project": "blog", "url": staging},
        "reports": {"project": "blog", "url_env": "REPORTS_DATABASE_URL"},
    }
    settings.DASHBOARD_CONFIG = str(fleet_config(tmp_path / "dashboard.toml", tmp_path, envs))
    settings.METRICS_ALLOWED_CIDRS = []
    status.status_refresh()
    users.user_set_role(username="vera", role="viewer", password="correct-horse-9")
    return Site(token=tokens.token_create(username="vera"), client=Client())


def scrape(site: Site, **extra: str) -> Samples:
    response = site.client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {site.token}", **extra)
    assert response.status_code == 200, response.content
    return parse(response.content.decode())


@pytest.mark.django_db
def test_every_environment_and_member_has_one_state_and_its_pending_count(site: Site) -> None:
    samples = scrape(site)
    expected = {
        "dev": "uninitialized",
        "staging": "behind",
        "reports": "unreachable",
        "tenants/acme": "current",
        "tenants/globex": "behind",
    }
    names = {
        dict(labels)["environment"]
        for (name, labels) in samples
        if name == "dashboard_environment_state"
    }
    assert names == set(expected)
    for env, state in expected.items():
        seen = states_of(samples, env)
        assert set(seen) == set(STATES), env  # a series for every state, as a state set has
        assert {s for s, v in seen.items() if v == 1} == {state}, env
    pending = "dashboard_environment_pending_revisions"
    assert value(samples, pending, environment="staging", project="blog", fleet="") == 5
    assert value(samples, pending, environment="tenants/acme", project="blog", fleet="tenants") == 0
    # Nothing can be planned from an unreachable environment: no number rather than a wrong one.
    assert value(samples, pending, environment="reports", project="blog", fleet="") is None
    age = value(
        samples,
        "dashboard_environment_last_read_age_seconds",
        environment="staging",
        project="blog",
        fleet="",
    )
    assert age is not None and 0 <= age < 60
    assert value(samples, "dashboard_config_ok") == 1


@pytest.mark.django_db
def test_no_label_or_value_holds_a_url_or_a_password(site: Site) -> None:
    body = site.client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {site.token}").content.decode()
    assert "dashboard_environment_state" in body
    for secret in (PASSWORD, "postgresql://", "sqlite://", "127.0.0.1:9", "report:"):
        assert secret not in body


@pytest.mark.django_db
def test_actions_queue_workers_and_schema_differences(site: Site) -> None:
    for status_ in (Action.Status.SUCCEEDED, Action.Status.SUCCEEDED, Action.Status.FAILED):
        Action.objects.create(
            environment="staging",
            project="blog",
            direction="upgrade",
            target=HEAD,
            target_heads=[HEAD],
            from_heads=[MID],
            plan=[HEAD],
            fingerprint="0" * 64,
            plan_hash="0" * 64,
            status=status_,
            requested_by_name="olga",
        )
    refresh = queue.task_named("refresh_status_periodically")
    refresh.enqueue()
    refresh.using(run_after=timezone.now() + timedelta(hours=1)).enqueue()  # not due: not counted
    workers.worker_beat_record(name="box:41", started_at=timezone.now())
    now = timezone.now()
    differences = [{"kind": "add_column", "table": "users", "name": "x", "detail": ""}] * 2
    SchemaCheck.objects.create(
        environment="staging",
        project="blog",
        trigger="periodic",
        state=SchemaCheck.State.DRIFT,
        differences=differences,
        checked_at=now,
    )
    SchemaCheck.objects.create(
        environment="tenants/acme",
        project="blog",
        trigger="periodic",
        state=SchemaCheck.State.IN_SYNC,
        checked_at=now,
    )
    samples = scrape(site)
    assert value(samples, "dashboard_actions", status="succeeded") == 2
    assert value(samples, "dashboard_actions", status="failed") == 1
    assert value(samples, "dashboard_actions", status="running") == 0
    assert value(samples, "dashboard_queue_depth") == 1
    beat = value(samples, "dashboard_worker_heartbeat_age_seconds", worker="box:41")
    assert beat is not None and 0 <= beat < 60
    schema = "dashboard_environment_schema_differences"
    assert value(samples, schema, environment="staging", project="blog", fleet="") == 2
    assert value(samples, schema, environment="tenants/acme", project="blog", fleet="tenants") == 0
    # Never checked: no series, rather than a 0 that would read as "in sync".
    assert value(samples, schema, environment="dev", project="blog", fleet="") is None
    assert all(v == 1 for (name, _), v in samples.items() if name == "dashboard_metrics_part_ok")


@pytest.mark.django_db
def test_the_scrape_costs_a_few_queries_per_batch_of_environments_never_one_each(
    site: Site, settings: Any
) -> None:
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            scrape(site)
        return len(captured)

    def members(count: int) -> Samples:
        names = ", ".join(f'"t{n}"' for n in range(count))
        config.write_text(original.replace('"acme", "globex"', names), encoding="utf-8")
        stamp = time.time_ns() + count * 10**9  # a new mtime re-reads the config
        os.utime(config, ns=(stamp, stamp))
        return scrape(site)

    config = Path(settings.DASHBOARD_CONFIG)
    original = config.read_text()
    queries()  # the first use of the token records it
    few = queries()
    assert few == 7  # the README's figure: token, config-independent tables, one batch each
    # Three environments beside the members; up to a batch of names, the count stays put.
    assert sum(1 for (name, _) in members(40) if name == "dashboard_environment_state") == 43 * len(
        STATES
    )
    assert queries() == few
    # Past a batch, the newest snapshots and the latest checks take one more query each per batch.
    assert status_selectors.NEWEST_BATCH == drift_selectors.NEWEST_BATCH
    many = members(450)
    assert sum(1 for (name, _) in many if name == "dashboard_environment_state") == 453 * len(
        STATES
    )
    batches = -(-453 // status_selectors.NEWEST_BATCH)
    assert batches == 3
    assert queries() == few + 2 * (batches - 1)


@pytest.mark.django_db
def test_a_scraper_asking_for_openmetrics_gets_it(site: Site) -> None:
    response = site.client.get(
        "/metrics",
        HTTP_AUTHORIZATION=f"Bearer {site.token}",
        HTTP_ACCEPT="application/openmetrics-text; version=1.0.0",
    )
    assert response["Content-Type"].startswith("application/openmetrics-text")
    body = response.content.decode()
    assert body.endswith("# EOF\n")
    assert "# TYPE dashboard_environment_state gauge" in body


@pytest.mark.django_db
def test_a_broken_config_says_so_and_the_rest_still_answers(site: Site, settings: Any) -> None:
    settings.DASHBOARD_CONFIG = "/nonexistent/dashboard.toml"
    samples = scrape(site)
    assert value(samples, "dashboard_config_ok") == 0
    assert not any(name == "dashboard_environment_state" for name, _ in samples)
    assert value(samples, "dashboard_queue_depth") == 0


@pytest.mark.django_db
def test_who_may_read_the_metrics(site: Site, settings: Any) -> None:
    client = site.client
    refused = client.get("/metrics")
    assert refused.status_code == 401
    assert refused["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer mdb_wrong").status_code == 401
    assert client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {site.token}").status_code == 405
    # A token of an account without a role reads nothing, as on the API.
    get_user_model().objects.create_user(username="nobody", password="correct-horse-9")
    nobody = tokens.token_create(username="nobody")
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {nobody}").status_code == 403
    client.login(username="vera", password="correct-horse-9")
    assert client.get("/metrics").status_code == 200  # a signed-in viewer, as on the API


@pytest.mark.django_db
def test_allowed_addresses_read_without_a_token(site: Site, settings: Any) -> None:
    settings.METRICS_ALLOWED_CIDRS = ["10.1.0.0/16", "2001:db8::/32"]
    client = site.client
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::ffff:10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="2001:db8::7").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="10.2.0.1").status_code == 401
    # Not behind a proxy, X-Forwarded-For is anyone's to write.
    forged = client.get("/metrics", REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR="10.1.2.3")
    assert forged.status_code == 401
    # A bad token is refused even from an allowed address, so a scraper hears it is wrong.
    bad = client.get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer mdb_wrong")
    assert bad.status_code == 401
    # Behind the proxy the last entry is what the proxy saw; earlier ones the client wrote.
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    proxied = {"REMOTE_ADDR": "192.0.2.1"}
    seen = client.get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.9, 10.1.2.3", **proxied)
    assert seen.status_code == 200
    spoofed = client.get("/metrics", HTTP_X_FORWARDED_FOR="10.1.2.3, 203.0.113.9", **proxied)
    assert spoofed.status_code == 401


@pytest.mark.django_db
def test_an_allowed_proxy_not_trusted_lets_no_one_in_by_address(
    site: Site, settings: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.METRICS_ALLOWED_CIDRS = ["10.0.0.0/8"]
    monkeypatch.setattr(metrics_views, "_warned", [])
    client = site.client
    proxy = {"REMOTE_ADDR": "10.0.3.4"}  # the proxy's address, allowed; BEHIND_PROXY unset
    with caplog.at_level("WARNING", logger="dashboard.views.metrics"):
        assert (
            client.get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.9", **proxy).status_code == 401
        )
        assert client.get("/metrics", HTTP_FORWARDED="for=203.0.113.9", **proxy).status_code == 401
    warnings = [r.getMessage() for r in caplog.records if r.name == "dashboard.views.metrics"]
    assert len(warnings) == 1 and "BEHIND_PROXY" in warnings[0], warnings  # once, not per scrape
    bearer = f"Bearer {site.token}"
    with_token = client.get(
        "/metrics", HTTP_X_FORWARDED_FOR="203.0.113.9", HTTP_AUTHORIZATION=bearer, **proxy
    )
    assert with_token.status_code == 200
    assert client.get("/metrics", **proxy).status_code == 200  # the scraper on the proxy's host
    # Behind the trusted proxy, a Forwarded header alone names nobody the dashboard reads.
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert client.get("/metrics", HTTP_FORWARDED="for=10.1.1.1", **proxy).status_code == 401
    assert client.get("/metrics", HTTP_X_FORWARDED_FOR="10.1.1.1", **proxy).status_code == 200


def test_a_bad_cidr_stops_the_start_with_a_clear_error() -> None:
    env = {**os.environ, "METRICS_ALLOWED_CIDRS": "10.0.0.0/8, 10.0.0/33", "DEBUG": "1"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [sys.executable, "-c", "import dashboard.settings"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "ImproperlyConfigured: METRICS_ALLOWED_CIDRS: " in done.stderr
    assert "10.0.0/33" in done.stderr


# --- gunicorn with two workers ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    port: int
    token: str
    folder: Path
    env: dict[str, str]
    multiproc: Path

    def get(self, path: str, *, token: bool = True, source: str = "") -> tuple[int, str]:
        """GET a path on a new connection (from this source address); return status and body."""
        conn = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=30, source_address=(source, 0) if source else None
        )
        try:
            headers = {"Authorization": f"Bearer {self.token}"} if token else {}
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def scrape(self) -> Samples:
        code, body = self.get("/metrics")
        assert code == 200, body
        return parse(body)

    def manage(self, *args: str, extra: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**self.env, **(extra or {})},
            timeout=120,
            check=False,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return done.stdout


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A migrated SQLite dashboard database, real environments, and gunicorn with 2 workers."""
    folder = tmp_path_factory.mktemp("metrics")
    dev, prod = (f"sqlite:///{folder / name}.db" for name in ("dev", "prod"))
    alembic(dev, "upgrade", "heads")
    alembic(prod, "upgrade", MID)
    write_versions(empty_sqlite(folder / "tenant-acme.db"), [HEAD])
    write_versions(empty_sqlite(folder / "tenant-globex.db"), [MID])
    envs = {
        "dev": {"project": "blog", "url": dev},
        "prod": {"project": "blog", "url": prod},
        "reports": {"project": "blog", "url_env": "REPORTS_DATABASE_URL"},
    }
    fleet_config(folder / "dashboard.toml", folder, envs)
    multiproc = folder / "prometheus"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DASHBOARD_", "PROM"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="dashboard.settings",
        DATABASE_URL=f"sqlite:///{folder / 'dash.sqlite3'}",
        DASHBOARD_CONFIG=str(folder / "dashboard.toml"),
        DASHBOARD_VAR_DIR=str(folder),
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(40),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        REPORTS_DATABASE_URL=REPORTS_URL,
        # 127.0.0.2 is the loopback too: a connection from it stands for an allowed scraper.
        METRICS_ALLOWED_CIDRS="127.0.0.2/32",
        PROMETHEUS_MULTIPROC_DIR=str(multiproc),
    )
    site = Served(port=free_port(), token="", folder=folder, env=env, multiproc=multiproc)
    site.manage("migrate", "--no-input", "-v", "0")
    site.manage("adduser", "ci", "--role", "viewer", extra={"DASHBOARD_PASSWORD": "Ci-pass-1234"})
    site.token = site.manage("apitoken", "create", "ci").strip().split()[-1]
    assert site.token.startswith(tokens.PREFIX)
    site.manage("status")
    site.manage("status", "--fleet", "tenants")
    log = (folder / "gunicorn.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "dashboard" / "gunicorn_conf.py")]
        + ["--bind", f"127.0.0.1:{site.port}", "--workers", "2", "--log-level", "warning"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (folder / "gunicorn.log").read_text()
            try:
                if site.get("/healthz", token=False)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "gunicorn did not answer /healthz within 60 s"
            time.sleep(0.2)
        yield site
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def steady(samples: Samples) -> Samples:
    """Return the samples that do not move by themselves between two scrapes."""
    return {
        key: v
        for key, v in samples.items()
        if not key[0].endswith("_age_seconds") and not key[0].startswith("dashboard_http_")
    }


def pids(folder: Path) -> set[str]:
    """Return the processes that wrote request counts to the multi-process folder."""
    return {path.stem.rpartition("_")[2] for path in folder.glob("counter_*.db")}


def healthz_count(samples: Samples) -> float:
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "dashboard_http_requests_total" and dict(labels).get("view") == "healthz"
    )


@pytest.mark.once  # its own SQLite dashboard database, whatever backend the run tests
def test_gunicorn_two_workers_report_every_state_and_the_change_after_a_refresh(
    served: Served,
) -> None:
    first = served.scrape()
    expected = {
        "dev": "current",
        "prod": "behind",
        "reports": "unreachable",
        "tenants/acme": "current",
        "tenants/globex": "behind",
    }
    for env, state in expected.items():
        assert {s for s, v in states_of(first, env).items() if v == 1} == {state}, env
    labels = {"environment": "prod", "project": "blog", "fleet": ""}
    assert value(first, "dashboard_environment_pending_revisions", **labels) == 5
    code, body = served.get("/metrics")
    assert code == 200
    for secret in (PASSWORD, "postgresql://", "sqlite://", str(served.folder)):
        assert secret not in body

    # Requests spread over both workers; the counts of both add up in every scrape.
    before = healthz_count(served.scrape())
    sent = 0
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(10):
            codes = list(pool.map(lambda _: served.get("/healthz", token=False)[0], range(16)))
            assert set(codes) == {200}
            sent += len(codes)
            if len(pids(served.multiproc)) == 2:
                break
    assert len(pids(served.multiproc)) == 2, "one worker answered every request"
    after = [served.scrape() for _ in range(4)]
    assert [healthz_count(s) - before for s in after] == [sent] * 4

    # Scrapes answered by either worker agree: the gauges come from the database.
    with ThreadPoolExecutor(max_workers=2) as pool:
        pairs = [steady(s) for s in pool.map(lambda _: served.scrape(), range(6))]
    assert all(p == pairs[0] for p in pairs)

    alembic(f"sqlite:///{served.folder / 'prod.db'}", "upgrade", "heads")
    served.manage("status", "--env", "prod")
    with ThreadPoolExecutor(max_workers=2) as pool:
        refreshed = list(pool.map(lambda _: served.scrape(), range(4)))
    for samples in refreshed:
        assert states_of(samples, "prod")["current"] == 1
        assert states_of(samples, "prod")["behind"] == 0
        assert value(samples, "dashboard_environment_pending_revisions", **labels) == 0
        assert states_of(samples, "tenants/globex")["behind"] == 1  # the others as they were


@pytest.mark.once  # its own SQLite dashboard database, whatever backend the run tests
def test_gunicorn_refuses_strangers_and_lets_tokens_and_allowed_addresses_in(
    served: Served,
) -> None:
    code, body = served.get("/metrics", token=False)
    assert (code, "dashboard_" in body) == (401, False)
    assert served.get("/metrics")[0] == 200
    code, body = served.get("/metrics", token=False, source="127.0.0.2")
    assert code == 200
    assert "dashboard_environment_state" in body


@pytest.mark.once  # a gunicorn of its own, on the module's SQLite dashboard database
def test_gunicorn_removes_the_folder_it_made_even_after_a_reload(
    served: Served, tmp_path: Path
) -> None:
    env = {k: v for k, v in served.env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["TMPDIR"] = str(tmp_path)  # where the config makes its temporary folder
    log_path = tmp_path / "gunicorn.log"
    port = free_port()
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "dashboard" / "gunicorn_conf.py")]
            + ["--bind", f"127.0.0.1:{port}", "--workers", "1", "--log-level", "info"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:

            def wait_for(booted: int) -> None:
                """Wait until this many workers have booted and one answers /healthz."""
                deadline = time.monotonic() + 60
                while True:
                    text = log_path.read_text()
                    assert server.poll() is None, text
                    if text.count("Booting worker") >= booted:
                        check = Served(port, "", served.folder, env, served.multiproc)
                        try:
                            if check.get("/healthz", token=False)[0] == 200:
                                return
                        except OSError:
                            pass
                    assert time.monotonic() < deadline, text
                    time.sleep(0.2)

            wait_for(1)
            made = list(tmp_path.glob("dashboard-metrics-*"))
            assert len(made) == 1 and made[0].is_dir()
            server.send_signal(signal.SIGHUP)  # gunicorn re-reads its config and new workers boot
            wait_for(2)
            assert "Hang up" in log_path.read_text()
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=30) == 0
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    assert not made[0].exists(), log_path.read_text()
