"""Sign-in throttling: per username and address with backoff, an address ceiling, one audit row."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from django.db import connection
from django.http import HttpResponse
from django.test import Client
from django.utils import timezone

from dashboard.models import AuditEvent, SignInRefusals, SignInThrottle
from dashboard.services import signin, users

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-9"
LOGIN = "/accounts/login/"
OFFICE = "10.20.30.40"


def sign_in(username: str, password: str, address: str = OFFICE) -> HttpResponse:
    return Client(REMOTE_ADDR=address).post(LOGIN, {"username": username, "password": password})


@pytest.fixture
def accounts(settings: Any) -> None:
    settings.DASHBOARD_SIGNIN_MAX_FAILURES = 3
    settings.DASHBOARD_SIGNIN_WINDOW = 600
    settings.DASHBOARD_SIGNIN_ADDRESS_MAX_FAILURES = None  # ten times the per-user limit
    for name in ("ann", "ben"):
        users.user_set_role(username=name, role="viewer", password=PASSWORD)


@contextmanager
def clock(moment: datetime) -> Iterator[None]:
    with mock.patch("django.utils.timezone.now", return_value=moment):
        yield


def test_one_users_failures_do_not_lock_out_the_others_behind_the_same_address(
    accounts: None,
) -> None:
    for _ in range(3):
        assert sign_in("ann", "wrong").status_code == 200
    assert sign_in("ann", PASSWORD).status_code == 429
    # Ben sits in the same office, behind the same proxy address.
    assert sign_in("ben", PASSWORD).status_code == 302
    # Ann herself, from home, is not refused either: the key is her name from that address.
    assert sign_in("ann", PASSWORD, address="192.0.2.7").status_code == 302


def test_an_address_is_refused_once_it_reaches_its_much_higher_ceiling(
    accounts: None, settings: Any
) -> None:
    for i in range(29):
        assert sign_in(f"guess{i}", "wrong").status_code == 200
    assert sign_in("ben", PASSWORD).status_code == 302
    sign_in("guess29", "wrong")  # the thirtieth failure from the address: ten times three
    refused = sign_in("ben", PASSWORD)
    assert refused.status_code == 429
    assert AuditEvent.objects.get(verb="auth.sign_in_throttled").payload["by"] == "ip"
    assert sign_in("ben", PASSWORD, address="192.0.2.8").status_code == 302
    # The ceiling has its own setting.
    settings.DASHBOARD_SIGNIN_ADDRESS_MAX_FAILURES = 2
    for name in ("x", "y"):
        sign_in(name, "wrong", address="192.0.2.9")
    assert sign_in("ben", PASSWORD, address="192.0.2.9").status_code == 429


def test_an_ipv6_host_is_counted_by_its_slash_64(accounts: None, settings: Any) -> None:
    settings.DASHBOARD_SIGNIN_ADDRESS_MAX_FAILURES = 3
    for i in range(3):
        sign_in(f"guess{i}", "wrong", address=f"2001:db8:1:2::{i + 1}")
    # Every address of the /64 belongs to the host that failed; the next /64 is someone else.
    assert sign_in("ben", PASSWORD, address="2001:db8:1:2:ffff::9").status_code == 429
    assert sign_in("ben", PASSWORD, address="2001:db8:1:3::1").status_code == 302


def test_each_further_failure_doubles_the_wait_up_to_the_cap(
    accounts: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signin, "MAX_WAIT", timedelta(seconds=2000))
    start = timezone.now()
    for _ in range(3):
        sign_in("ann", "wrong")
    waits = [int(sign_in("ann", PASSWORD)["Retry-After"])]
    moment = start
    for _ in range(3):
        # Once the wait is over, one more wrong password blocks the key for twice as long.
        moment += timedelta(seconds=waits[-1] + 1)
        with clock(moment):
            assert sign_in("ann", "wrong").status_code == 200
            refused = sign_in("ann", PASSWORD)
        assert refused.status_code == 429
        waits.append(int(refused["Retry-After"]))
    assert [round(w, -1) for w in waits] == [600, 1200, 2000, 2000]
    assert "try again in 34 minutes" in refused.content.decode()


def test_a_success_resets_the_backoff_of_that_key_only(accounts: None) -> None:
    start = timezone.now()
    for address in (OFFICE, "192.0.2.10"):
        for _ in range(3):
            sign_in("ann", "wrong", address=address)
    later = start + timedelta(seconds=601)
    with clock(later):
        assert sign_in("ann", PASSWORD).status_code == 302
        # From the office the next block is one window again...
        for _ in range(3):
            sign_in("ann", "wrong")
        assert 590 <= int(sign_in("ann", PASSWORD)["Retry-After"]) <= 600
        # ...from the other address one more failure doubles it: nobody signed in from there.
        sign_in("ann", "wrong", address="192.0.2.10")
        assert int(sign_in("ann", PASSWORD, address="192.0.2.10")["Retry-After"]) > 1190


def test_three_hundred_throttled_attempts_add_one_audit_event(accounts: None) -> None:
    for _ in range(3):
        sign_in("ann", "wrong")
    before = AuditEvent.objects.count()
    for _ in range(300):
        assert sign_in("ann", PASSWORD).status_code == 429
    assert AuditEvent.objects.count() == before + 1
    event = AuditEvent.objects.get(verb="auth.sign_in_throttled")
    assert event.actor_name == "ann" and event.ip == OFFICE
    assert SignInRefusals.objects.get(event=event).count == 300


def test_a_new_block_records_a_new_event(accounts: None) -> None:
    start = timezone.now()
    for _ in range(3):
        sign_in("ann", "wrong")
    for _ in range(5):
        sign_in("ann", PASSWORD)
    with clock(start + timedelta(seconds=601)):
        sign_in("ann", "wrong")
        for _ in range(4):
            sign_in("ann", PASSWORD)
    counts = [
        SignInRefusals.objects.get(event=e).count
        for e in AuditEvent.objects.filter(verb="auth.sign_in_throttled").order_by("id")
    ]
    assert counts == [5, 4]


def test_the_audit_page_shows_how_often_a_block_refused(accounts: None) -> None:
    for _ in range(3):
        sign_in("ann", "wrong")
    for _ in range(7):
        sign_in("ann", PASSWORD)
    users.user_set_role(username="vera", role="viewer", password=PASSWORD)
    viewer = Client()
    assert viewer.login(username="vera", password=PASSWORD)
    page = viewer.get("/audit/", {"verb": "auth.sign_in_throttled"}).content.decode()
    assert "This block refused 7 attempts" in page


def _in_threads(count: int, work: Any) -> None:
    """Run work(i) in `count` threads at once, each on its own database connection."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            work(i)
        except BaseException as exc:  # noqa: BLE001 (reported by the test below)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors


@pytest.mark.django_db(transaction=True)
def test_concurrent_failures_and_refusals_are_all_counted(settings: Any) -> None:
    # Several web processes share nothing but the database: each thread has its own connection.
    settings.DASHBOARD_SIGNIN_MAX_FAILURES = 1000
    settings.DASHBOARD_SIGNIN_WINDOW = 600
    users.user_set_role(username="ann", role="viewer", password=PASSWORD)

    def fail(_i: int) -> None:
        for _ in range(5):
            assert sign_in("ann", "wrong").status_code == 200

    _in_threads(6, fail)
    key = SignInThrottle.objects.get(scope="user", username="ann")
    assert key.failures == 30
    assert SignInThrottle.objects.get(scope="address").failures == 30

    settings.DASHBOARD_SIGNIN_MAX_FAILURES = 30

    def refused(_i: int) -> None:
        for _ in range(5):
            assert sign_in("ann", PASSWORD).status_code == 429

    sign_in("ann", "wrong")  # the thirty-first: the key is now blocked
    _in_threads(6, refused)
    event = AuditEvent.objects.get(verb="auth.sign_in_throttled")
    assert SignInRefusals.objects.get(event=event).count == 30


def test_the_address_ceiling_blocks_for_one_window_and_then_forgets(
    accounts: None, settings: Any
) -> None:
    # One person behind the office proxy must not lock the office out for longer and longer.
    settings.DASHBOARD_SIGNIN_ADDRESS_MAX_FAILURES = 5
    start = timezone.now()
    for i in range(5):
        sign_in(f"madeup{i}", "wrong", address="10.0.0.1")
    refused = sign_in("ben", PASSWORD, address="10.0.0.1")
    assert refused.status_code == 429
    assert 590 <= int(refused["Retry-After"]) <= 600
    moment = start
    for i in range(5):
        # One more failure each time the block ends neither blocks again nor doubles anything.
        moment += timedelta(seconds=601)
        with clock(moment):
            assert sign_in(f"again{i}", "wrong", address="10.0.0.1").status_code == 200
            assert sign_in("ben", PASSWORD, address="10.0.0.1").status_code == 302
    # A fresh ceiling's worth of failures blocks for one window again, not two.
    moment += timedelta(seconds=601)
    with clock(moment):
        for i in range(5):
            sign_in(f"more{i}", "wrong", address="10.0.0.1")
        refused = sign_in("ben", PASSWORD, address="10.0.0.1")
    assert refused.status_code == 429
    assert 590 <= int(refused["Retry-After"]) <= 600
