"""Notifications: config, events from the audit trail, delivery to a real loopback receiver."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from django.db import transaction
from django.utils import timezone
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from dashboard import audit
from dashboard.config import ConfigError, load_config
from dashboard.models import Action, NotificationDelivery
from dashboard.notify import bodies
from dashboard.notify.sender import NotificationSender
from dashboard.runner.process import child_secrets, replay_secrets
from dashboard.services import actions, notifications
from tests.actions_support import (
    ROOT,
    SAMPLE_INI,
    stop_worker,
    touch_sqlite,
    wait_for,
    worker_argv,
    worker_env,
)
from tests.fakeserver import silent_server

SECRET = "hook-secret-7f3a"
Status = NotificationDelivery.Status


@dataclass
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A loopback HTTP server that answers with the scripted statuses, then 200."""

    port: int
    script: list[int | str] = field(default_factory=list)  # a status, or "sleep:N"
    got: list[Received] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """Yield a running receiver on 127.0.0.1."""
    state = Receiver(port=0)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                state.got.append(Received(self.path, dict(self.headers), body, time.monotonic()))
                step = state.script.pop(0) if state.script else 200
            if isinstance(step, str):
                time.sleep(float(step.split(":")[1]))
                step = 200
            self.send_response(step)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _verified(got: Received) -> dict[str, Any]:
    """Check the signature as a receiver would, with the shared secret; return the document."""
    expected = "sha256=" + hmac.new(SECRET.encode(), got.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(got.headers["X-Dashboard-Signature"], expected)
    return json.loads(got.body)


def _config(tmp_path: Path, env_url: str, notify: str) -> Path:
    path = tmp_path / "dashboard.toml"
    path.write_text(
        f'[projects.blog]\nalembic_ini = "{SAMPLE_INI}"\n\n'
        f'[environments.staging]\nproject = "blog"\nurl = "{env_url}"\n'
        "approvals_required = 0\n\n" + notify,
        encoding="utf-8",
    )
    return path


JSON_HOOK = """
[notify.ops]
url_env = "OPS_HOOK_URL"
format = "json"
secret_env = "OPS_HOOK_SECRET"
events = ["failed", "succeeded", "started"]
base_url = "https://dash.example.org"
"""


@pytest.fixture
def hooked(
    tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> Any:
    """Make a config with the ops json notifier current, its variables pointing at receiver."""
    monkeypatch.setenv("OPS_HOOK_URL", receiver.url)
    monkeypatch.setenv("OPS_HOOK_SECRET", SECRET)
    path = _config(tmp_path, touch_sqlite(f"sqlite:///{tmp_path / 'target.db'}"), JSON_HOOK)
    settings.DASHBOARD_CONFIG = str(path)
    settings.DASHBOARD_NOTIFY_TIMEOUT = 1.0
    return load_config(path)


def _action(**fields: Any) -> Action:
    values: dict[str, Any] = {
        "environment": "staging",
        "project": "blog",
        "direction": "upgrade",
        "target": "heads",
        "fingerprint": "f" * 64,
        "plan_hash": "p" * 64,
        "requested_by_name": "olga",
        "status": Action.Status.FAILED,
        **fields,
    }
    return Action.objects.create(**values)


def _failed_event(action: Action, error: str = "RuntimeError: boom") -> list[NotificationDelivery]:
    """Record a failed run the way the runner does, commit, and return the deliveries made."""
    with transaction.atomic():
        audit.record(
            "action.failed",
            actor_name=audit.SYSTEM,
            environment=action.environment,
            action_id=action.pk,
            payload={"error": error, "after_heads": [], "worker": "w"},
        )
    return list(NotificationDelivery.objects.filter(action_id=action.pk).order_by("id"))


# Config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('url = "https://hooks.example/x"\n', "unknown key 'url'"),
        ('url_env = "H"\nformat = "json"\nsecret_env = "S"\nevents = ["exploded"]\n', "unknown event 'exploded'"),
        ('url_env = "H"\nformat = "xml"\nevents = ["failed"]\n', "format must be one of slack, json"),
        ('url_env = "H"\nformat = "json"\nevents = ["failed"]\n', "needs secret_env"),
        ('format = "slack"\nevents = ["failed"]\n', "needs url_env"),
        ('url_env = "H"\nformat = "slack"\nevents = []\n', "at least one of"),
        ('url_env = "H"\nformat = "slack"\nevents = "failed"\n', "events must be a list of strings"),
        ('url_env = "https://hooks.example/T0/secret"\nformat = "slack"\nevents = ["failed"]\n',
         "must name an environment variable"),
        ('url_env = "H"\nformat = "slack"\nevents = ["failed"]\nbase_url = "https://u:pw@dash"\n',
         "no user, password"),
        ('url_env = "H"\nformat = "slack"\nevents = ["failed"]\nenvironments = "prod"\n',
         "environments must be a list"),
    ],
)  # fmt: skip
def test_a_bad_notifier_is_a_config_error_naming_its_table_and_key(
    tmp_path: Path, table: str, message: str
) -> None:
    path = _config(tmp_path, "sqlite:///x.db", "[notify.ops]\n" + table)
    with pytest.raises(ConfigError, match=r"\[notify\.ops\]") as raised:
        load_config(path)
    assert message in str(raised.value)
    assert "hooks.example" not in str(raised.value)  # a pasted URL is never quoted back


def test_a_notifier_parses_and_its_variables_never_reach_alembics_children(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, "sqlite:///x.db", JSON_HOOK))
    ops = config.notifiers["ops"]
    assert (ops.format, ops.events, ops.secret_env) == (
        "json",
        {"failed", "succeeded", "started"},
        "OPS_HOOK_SECRET",
    )
    staging = config.environments["staging"]
    assert {"OPS_HOOK_URL", "OPS_HOOK_SECRET"} <= child_secrets(config, staging)
    assert {"OPS_HOOK_URL", "OPS_HOOK_SECRET"} <= replay_secrets(config)


def test_filters_select_events_environments_and_fleets(tmp_path: Path) -> None:
    notify = """
[notify.prod]
url_env = "H"
format = "slack"
events = ["failed", "rollout_paused"]
environments = ["prod", "tenants/*"]
fleets = ["shards"]
"""
    n = load_config(_config(tmp_path, "sqlite:///x.db", notify)).notifiers["prod"]
    assert n.wants("failed", environment="prod")
    assert n.wants("failed", environment="tenants/acme", fleet="tenants")
    assert n.wants("failed", environment="shards/s1", fleet="shards")
    assert n.wants("rollout_paused", fleet="shards")
    assert not n.wants("failed", environment="staging")
    assert not n.wants("succeeded", environment="prod")  # not an event it asked for
    assert not n.wants("rollout_paused", fleet="tenants")  # environments name members only
    unfiltered = dataclasses.replace(n, environments=(), fleets=())
    assert unfiltered.wants("failed", environment="anything")


# Events -----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_event_reaches_each_wanting_receiver_once_and_only_after_commit(
    hooked: Any, receiver: Receiver
) -> None:
    action = _action()
    with transaction.atomic():
        event = audit.record(
            "action.failed", actor_name=audit.SYSTEM, environment="staging", action_id=action.pk
        )
        assert not NotificationDelivery.objects.exists()  # nothing before the commit
    [row] = NotificationDelivery.objects.all()
    assert (row.notifier, row.event, row.environment, row.action_id) == (
        "ops",
        "failed",
        "staging",
        action.pk,
    )
    assert row.status == Status.PENDING and row.attempts == 0
    # The same event again (a retry of the hook) makes no second delivery.
    assert notifications.deliveries_create(event) == []
    assert NotificationDelivery.objects.count() == 1
    # A rolled-back action records nothing to tell.
    with pytest.raises(RuntimeError), transaction.atomic():
        audit.record("action.started", actor_name=audit.SYSTEM, action_id=action.pk)
        raise RuntimeError("rolled back")
    assert NotificationDelivery.objects.count() == 1
    # Events nobody asked for make none: the ops notifier wants no approvals.
    with transaction.atomic():
        audit.record(
            "action.approved",
            actor_name="alan",
            environment="staging",
            action_id=action.pk,
            payload={"approvals": 1, "required": 1},
        )
    assert NotificationDelivery.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_approvals_notify_once_enough_approved_and_awaiting_approval_after_prepare(
    tmp_path: Path, settings: Any
) -> None:
    notify = (
        '[notify.team]\nurl_env = "H"\nformat = "slack"\n'
        'events = ["awaiting_approval", "approved", "drift_found"]\n'
    )
    settings.DASHBOARD_CONFIG = str(_config(tmp_path, "sqlite:///x.db", notify))
    action = _action(status=Action.Status.REQUESTED, approvals_required=2)
    for approvals in (1, 2):
        audit.record(
            "action.approved",
            actor_name="alan",
            environment="staging",
            action_id=action.pk,
            payload={"approvals": approvals, "required": 2},
        )
    audit.record("action.prepared", actor_name="system", action_id=action.pk, payload={})
    audit.record(
        "schema.drift_found",
        actor_name="system",
        environment="staging",
        payload={"differences": 2, "items": ["missing_column users.phone", "extra_index x.y"]},
    )
    rows = list(NotificationDelivery.objects.order_by("id"))
    assert [r.event for r in rows] == ["approved", "awaiting_approval", "drift_found"]
    texts = [json.loads(r.body)["text"] for r in rows]
    assert texts[0] == f"staging: action #{action.pk} upgrade to heads was approved by alan"
    assert "awaits approval (requested by olga)" in texts[1]
    assert texts[2] == "staging schema drift found (2 difference(s))"


def test_error_text_loses_urls_passwords_and_sql() -> None:
    raw = (
        '(psycopg2.errors.DuplicateTable) relation "users" already exists '
        "on postgresql://app:hunter2@db.internal/prod password=hunter2 "
        "[SQL: CREATE TABLE users (id INTEGER)]\n(Background on this error at: https://sqlalche.me/e/20/f405)"
    )
    cleaned = bodies.clean_text(raw)
    assert cleaned.startswith('(psycopg2.errors.DuplicateTable) relation "users" already exists')
    for leak in ("hunter2", "postgresql://", "db.internal", "CREATE TABLE", "sqlalche.me"):
        assert leak not in cleaned


# Delivery ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_success_posts_a_signed_json_document_and_records_the_attempt(
    hooked: Any, receiver: Receiver
) -> None:
    action = _action()
    [row] = _failed_event(action, "RuntimeError: MIGRATIONS_PROJECT_FAIL requested")
    assert notifications.deliveries_send_due() == [row.pk]
    [got] = receiver.got
    document = _verified(got)
    assert got.path == "/hook" and got.headers["X-Dashboard-Event"] == "failed"
    assert document["event"] == "failed" and document["delivery"] == row.pk
    assert document["environment"] == "staging" and document["project"] == "blog"
    assert document["action"] == {
        "id": action.pk,
        "direction": "upgrade",
        "target": "heads",
        "status": "failed",
        "url": f"https://dash.example.org/actions/{action.pk}/",
    }
    assert document["detail"]["error"] == "RuntimeError: MIGRATIONS_PROJECT_FAIL requested"
    assert document["actor"] == "system"
    row.refresh_from_db()
    assert (row.status, row.attempts, row.response_status, row.last_error) == (
        Status.DELIVERED,
        1,
        200,
        "",
    )
    assert row.delivered_at is not None and row.next_attempt_at is None
    assert row.body.encode() == got.body  # the stored body is exactly what was posted
    assert notifications.deliveries_send_due() == []  # delivered once


@pytest.mark.django_db(transaction=True)
def test_a_500_is_retried_after_the_backoff_and_then_delivered(
    hooked: Any, receiver: Receiver
) -> None:
    receiver.script = [500]
    [row] = _failed_event(_action())
    before = timezone.now()
    notifications.deliveries_send_due()
    row.refresh_from_db()
    assert (row.status, row.attempts, row.response_status, row.last_error) == (
        Status.PENDING,
        1,
        500,
        "HTTP 500",
    )
    wait = (row.next_attempt_at - before).total_seconds()
    assert 9.5 <= wait <= 12
    assert notifications.deliveries_send_due() == []  # not due before its time
    # The clock moves past the wait.
    NotificationDelivery.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
    assert notifications.deliveries_send_due() == [row.pk]
    row.refresh_from_db()
    assert (row.status, row.attempts, row.response_status, row.last_error) == (
        Status.DELIVERED,
        2,
        200,
        "",
    )
    assert len(receiver.got) == 2 and receiver.got[0].body == receiver.got[1].body


@pytest.mark.django_db(transaction=True)
def test_five_failed_attempts_back_off_10s_30s_2min_10min_then_give_up(
    hooked: Any, receiver: Receiver
) -> None:
    receiver.script = [503] * 5
    [row] = _failed_event(_action())
    waits = []
    for _ in range(5):
        NotificationDelivery.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
        started = timezone.now()
        assert notifications.deliveries_send_due() == [row.pk]
        row.refresh_from_db()
        if row.next_attempt_at is not None:
            waits.append(round((row.next_attempt_at - started).total_seconds()))
    assert waits == [10, 30, 120, 600]
    assert (row.status, row.attempts, row.response_status, row.last_error) == (
        Status.FAILED,
        5,
        503,
        "HTTP 503",
    )
    assert notifications.deliveries_send_due() == []


@pytest.mark.django_db(transaction=True)
def test_a_slow_receiver_times_out_without_its_url_in_the_error(
    hooked: Any, receiver: Receiver
) -> None:
    receiver.script = ["sleep:3"]
    [row] = _failed_event(_action())
    started = time.monotonic()
    notifications.deliveries_send_due()
    took = time.monotonic() - started
    row.refresh_from_db()
    assert took < 2.5  # the 1 s timeout, not the receiver's 3 s
    assert (row.status, row.attempts, row.response_status) == (Status.PENDING, 1, None)
    assert row.last_error == "no answer within 1 s"


@pytest.mark.django_db(transaction=True)
def test_a_receiver_that_never_answers_and_one_that_is_gone(
    hooked: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with silent_server() as port:
        monkeypatch.setenv("OPS_HOOK_URL", f"http://127.0.0.1:{port}/hook")
        [row] = _failed_event(_action())
        started = time.monotonic()
        notifications.deliveries_send_due()
        assert time.monotonic() - started < 2.5
    row.refresh_from_db()
    assert (row.attempts, row.response_status, row.last_error) == (1, None, "no answer within 1 s")
    monkeypatch.setenv("OPS_HOOK_URL", f"http://127.0.0.1:{port}/hook")  # now nobody listens
    NotificationDelivery.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
    notifications.deliveries_send_due()
    row.refresh_from_db()
    assert (row.attempts, row.last_error) == (2, "could not connect: refused or unreachable")
    monkeypatch.delenv("OPS_HOOK_URL")
    NotificationDelivery.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
    notifications.deliveries_send_due()
    row.refresh_from_db()
    assert (row.attempts, row.last_error) == (3, "not configured: OPS_HOOK_URL is not set")


@pytest.mark.django_db(transaction=True)
def test_the_sender_thread_posts_while_a_dead_receiver_holds_another(
    tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    notify = (
        JSON_HOOK
        + '\n[notify.stuck]\nurl_env = "STUCK_URL"\nformat = "slack"\nevents = ["failed"]\n'
    )
    settings.DASHBOARD_CONFIG = str(_config(tmp_path, "sqlite:///x.db", notify))
    settings.DASHBOARD_NOTIFY_TIMEOUT = 5.0
    monkeypatch.setenv("OPS_HOOK_URL", receiver.url)
    monkeypatch.setenv("OPS_HOOK_SECRET", SECRET)
    sender = NotificationSender(interval=0.05)
    with silent_server() as port:
        monkeypatch.setenv("STUCK_URL", f"http://127.0.0.1:{port}/")
        sender.start()
        try:
            rows = _failed_event(_action())
            assert sorted(r.notifier for r in rows) == ["ops", "stuck"]
            # The receiver has it before the sender records it: wait for the record.
            ops = NotificationDelivery.objects.filter(notifier="ops", status=Status.DELIVERED)
            wait_for(ops.exists, within=3)
            stuck = NotificationDelivery.objects.get(notifier="stuck")
            assert stuck.attempts == 0  # still waiting on the silent receiver
        finally:
            sender.stop()


# End to end: a real worker, a real failed run -----------------------------------------------


def _with_password(url: str, password: str) -> str:
    return make_url(url).set(password=password).render_as_string(hide_password=False)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("keep_roles")
def test_a_failed_run_posts_a_signed_notification_and_a_dead_receiver_never_delays_it(
    tmp_path: Path, people: dict[str, Any], settings: Any, postgres_url: str, receiver: Receiver
) -> None:
    # Trust authentication ignores the password: it is there to be kept out of the payload.
    url = _with_password(postgres_url, "pw-never-sent-42")
    engine = sa.create_engine(postgres_url, poolclass=NullPool)
    with engine.begin() as conn:  # the first revision's CREATE TABLE users fails: SQL in the error
        conn.execute(sa.text("CREATE TABLE users (id INTEGER)"))
    engine.dispose()
    notify = JSON_HOOK + (
        '\n[notify.stuck]\nurl_env = "STUCK_URL"\nformat = "slack"\nevents = ["started", "failed"]\n'
    )
    config = _config(tmp_path, url, notify)
    settings.DASHBOARD_CONFIG = str(config)
    with silent_server() as port:
        proc = subprocess.Popen(
            worker_argv("worker", batch=False),
            cwd=ROOT,
            env=worker_env(
                config,
                OPS_HOOK_URL=receiver.url,
                OPS_HOOK_SECRET=SECRET,
                STUCK_URL=f"http://127.0.0.1:{port}/",
                # The first revision waits 2 s: the sender takes the stuck post meanwhile.
                MIGRATIONS_PROJECT_SLEEP="2",
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # Its SQL rendered here, without the worker's sleep; no approval needed: queued.
            action = actions.action_request(
                user=people["root"],
                environment="staging",
                direction="upgrade",
                target="heads",
                prepare=True,
            )
            failed = wait_for(lambda: [g for g in receiver.got if b'"event":"failed"' in g.body])
            action.refresh_from_db()
            assert action.status == Action.Status.FAILED
            # The run started, ran and failed while the silent receiver still held its
            # "started" notification (a 10 s timeout): nothing waited on it.
            stuck = NotificationDelivery.objects.get(notifier="stuck", event="started")
            assert stuck.attempts == 0 and stuck.status == Status.PENDING
            assert stuck.next_attempt_at > timezone.now()  # claimed: its post is in flight
            assert (action.finished_at - action.started_at).total_seconds() < 8
        except BaseException:
            stop_worker(proc)
            raise
    try:
        document = _verified(failed[0])
        assert document["action"]["id"] == action.pk
        assert document["action"]["status"] == "failed"
        assert 'relation "users" already exists' in document["detail"]["error"]
        assert document["detail"]["error"] == bodies.clean_text(action.error)
        text = failed[0].body.decode()
        for leak in ("pw-never-sent-42", "postgresql", "CREATE TABLE", "127.0.0.1", SECRET):
            assert leak not in text, leak
        started = [g for g in receiver.got if b'"event":"started"' in g.body]
        assert len(started) == 1 and _verified(started[0])["action"]["id"] == action.pk
        # The silent receiver closed: its attempt ends, recorded, and waits for the next one.
        stuck = wait_for(
            lambda: NotificationDelivery.objects.filter(
                notifier="stuck", event="started", attempts=1
            ).first(),
            within=15,
        )
        assert stuck.response_status is None and stuck.status == Status.PENDING
        assert str(port) not in stuck.last_error
    finally:
        stop_worker(proc)


# The admins' page ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("keep_roles")
def test_admins_see_every_delivery_and_its_last_error_others_are_refused(
    hooked: Any, receiver: Receiver, people: dict[str, Any], client: Any
) -> None:
    receiver.script = [500]
    [row] = _failed_event(_action())
    notifications.deliveries_send_due()
    client.force_login(people["vic"])
    assert client.get("/notifications/").status_code == 403
    client.force_login(people["root"])
    page = client.get("/notifications/")
    assert page.status_code == 200
    html = page.content.decode()
    assert f'id="delivery-{row.pk}"' in html and "HTTP 500" in html and "OPS_HOOK_URL" in html
    assert receiver.url not in html and SECRET not in html
    failed_only = client.get("/notifications/?status=failed").content.decode()
    assert f'id="delivery-{row.pk}"' not in failed_only
    pending = client.get("/notifications/?status=pending", headers={"HX-Request": "true"})
    assert f'id="delivery-{row.pk}"' in pending.content.decode()
    assert "<h1>" not in pending.content.decode()  # the htmx answer is the table alone


@pytest.mark.django_db(transaction=True)
def test_rollout_events_reach_a_fleet_filtered_notifier_in_slack_words(
    tmp_path: Path, settings: Any
) -> None:
    from dashboard.models import Rollout

    notify = (
        '[notify.fleet]\nurl_env = "H"\nformat = "slack"\nfleets = ["tenants"]\n'
        'events = ["rollout_paused", "rollout_succeeded"]\nbase_url = "https://dash.example.org/"\n'
    )
    settings.DASHBOARD_CONFIG = str(_config(tmp_path, "sqlite:///x.db", notify))
    mine = Rollout.objects.create(
        fleet="tenants", project="blog", direction="upgrade", target="heads",
        requested_by_name="olga", status=Rollout.Status.PAUSED,
        paused_reason="1 member failed (acme): no new member starts until an operator resumes",
    )  # fmt: skip
    other = Rollout.objects.create(
        fleet="shards", project="blog", direction="upgrade", target="heads",
        requested_by_name="olga",
    )  # fmt: skip
    for rollout in (mine, other):
        audit.record(
            "rollout.paused",
            actor_name="system",
            payload={"rollout": rollout.pk, "wave": 2, "failed": ["acme"]},
        )
    audit.record("rollout.started", actor_name="system", payload={"rollout": mine.pk})
    [row] = NotificationDelivery.objects.all()
    assert (row.event, row.rollout_id, row.environment) == ("rollout_paused", mine.pk, "")
    assert json.loads(row.body)["text"] == (
        f"fleet tenants: rollout #{mine.pk} upgrade to heads paused: 1 member failed (acme):"
        " no new member starts until an operator resumes"
        f" <https://dash.example.org/rollouts/{mine.pk}|open>"
    )


# The deadline and the claim -------------------------------------------------------------------


@contextmanager
def dripping_server(*, every: float, drips: int) -> Iterator[tuple[int, list[float]]]:
    """Yield a port whose server answers one header byte every `every` s, and when POSTs came."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    posts: list[float] = []
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                posts.append(time.monotonic())
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                for _ in range(drips):  # every byte well within any read timeout
                    if stop.wait(every):
                        return
                    conn.sendall(b"X")
                conn.sendall(b": y\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                return  # the sender cut it

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, name="dripping-server", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], posts
    finally:
        stop.set()
        thread.join(1)
        listener.close()


@pytest.mark.django_db(transaction=True)
def test_a_dripping_receiver_is_cut_off_at_the_deadline(
    hooked: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="urllib3")
    with dripping_server(every=0.3, drips=20) as (port, posts):  # 6 s for its headers
        monkeypatch.setenv("OPS_HOOK_URL", f"http://127.0.0.1:{port}/hook")
        [row] = _failed_event(_action())
        started = time.monotonic()
        assert notifications.deliveries_send_due() == [row.pk]
        took = time.monotonic() - started
    assert len(posts) == 1
    assert took < 2.5  # the 1 s deadline for the whole attempt, not the receiver's 6 s
    assert "/hook" not in caplog.text  # urllib3's words on the cut-off headers name no URL
    row.refresh_from_db()
    assert (row.status, row.attempts, row.response_status, row.last_error) == (
        Status.PENDING,
        1,
        None,
        "no answer within 1 s",
    )


@pytest.mark.django_db(transaction=True)
def test_two_senders_with_a_short_lease_post_once_and_count_the_attempt(
    hooked: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Shorter than the 1 s deadline: the claim stretches it past the attempt.
    monkeypatch.setattr(notifications, "LEASE", timedelta(seconds=0.5))
    with dripping_server(every=0.3, drips=30) as (port, posts):
        monkeypatch.setenv("OPS_HOOK_URL", f"http://127.0.0.1:{port}/hook")
        [row] = _failed_event(_action())
        senders = [NotificationSender(interval=0.1), NotificationSender(interval=0.1)]
        for sender in senders:
            sender.start()
        try:
            wait_for(lambda: NotificationDelivery.objects.get(pk=row.pk).attempts, within=6)
            time.sleep(2)  # past any lease: nobody posts it again before its backoff
        finally:
            for sender in senders:
                sender.stop()
    row.refresh_from_db()
    assert len(posts) == 1
    assert (row.status, row.attempts, row.last_error) == (
        Status.PENDING,
        1,
        "no answer within 1 s",
    )


@pytest.mark.django_db(transaction=True)
def test_an_attempt_that_lost_its_claim_is_not_counted_and_never_claimed_by_its_own_sender(
    hooked: Any, receiver: Receiver, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.DASHBOARD_NOTIFY_TIMEOUT = 5.0
    receiver.script = ["sleep:2"]
    [row] = _failed_event(_action())
    sender = NotificationSender()  # looks when told to, not on its own
    caplog.set_level(logging.WARNING, logger="dashboard.services.notifications")
    try:
        assert sender.look_once() == [row.pk]
        wait_for(lambda: receiver.got, within=3)  # its post is in flight
        # Its lease runs out while the receiver takes its time (the clock moves past it).
        NotificationDelivery.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
        assert sender.look_once() == []  # never its own post in flight again
        assert notifications.deliveries_claim_due(limit=5) == [row.pk]  # another sender's now
        wait_for(lambda: "lost its claim" in caplog.text, within=6)
    finally:
        sender.stop()
    row.refresh_from_db()
    assert (row.status, row.attempts) == (Status.PENDING, 0)  # its late 200 is not counted
    assert str(receiver.port) not in caplog.text
    notifications.delivery_attempt(delivery_id=row.pk)  # the other sender's attempt
    row.refresh_from_db()
    assert (row.status, row.attempts, row.response_status) == (Status.DELIVERED, 1, 200)
    assert len(receiver.got) == 2
