"""Rollouts of PostgreSQL fleets run by several real workers: waves, the parallel cap, failures."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from dashboard.config import current_config
from dashboard.databases import versions
from dashboard.models import Action, Rollout
from dashboard.services import rollouts
from tests.actions_support import ROOT, wait_for, worker_argv, worker_env
from tests.databases import PG_ADMIN_URL, need_server
from tests.faults_support import alembic_processes
from tests.fleet_support import Tenants, fleet_config, most_at_once, tenant_databases
from tests.statusenv import HEAD, MID

# Worker processes share the test database, so every test commits for real.
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("keep_roles"),
    pytest.mark.postgres,
    pytest.mark.once,
]

FLEET = "tenants"
# The sample project's first revision creates users: a tenant that has one fails there.
BREAK = "CREATE TABLE users (id integer PRIMARY KEY)"
HEARTBEAT_LIMIT = 3.0
FAST_HOUSEKEEPING = {
    "DASHBOARD_HEARTBEAT_LIMIT": f"{HEARTBEAT_LIMIT:g}",
    "DASHBOARD_HOUSEKEEPING_INTERVAL": "1",
}


@pytest.fixture
def tenants() -> Iterator[Tenants]:
    """Yield throwaway tenant databases, all dropped afterwards (also when the test fails)."""
    need_server(PG_ADMIN_URL, "PostgreSQL")
    with tenant_databases() as made:
        yield made


class Workers:
    """`manage.py worker` processes sharing the test database, logging to one file."""

    def __init__(self, config: Path, log: Path, **extra: str) -> None:
        self.config, self.log, self.extra = config, log, extra
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, count: int = 1) -> None:
        for _ in range(count):
            with self.log.open("a", encoding="utf-8") as handle:
                self.procs.append(
                    subprocess.Popen(
                        worker_argv("worker", batch=False),
                        cwd=ROOT,
                        env=worker_env(self.config, **self.extra),
                        stdout=handle,
                        stderr=subprocess.STDOUT,
                        text=True,
                    )
                )

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def tail(self) -> str:
        return self.log.read_text(encoding="utf-8")[-3000:] if self.log.exists() else ""


def _configure(
    settings: Any, tmp_path: Path, tenants: Tenants, names: list[str], **fleet: Any
) -> Path:
    config = fleet_config(
        tmp_path / "dashboard.toml",
        fleet=FLEET,
        url_template=tenants.url_template(),
        names=names,
        approvals_required=1,
        **fleet,
    )
    settings.DASHBOARD_CONFIG = str(config)
    return config


def _approved(people: dict[str, Any]) -> Rollout:
    rollout = rollouts.rollout_request(
        user=people["olga"], fleet=FLEET, direction="upgrade", target="heads", prepare=True
    )
    return rollouts.rollout_approve(
        user=people["alan"], rollout_id=rollout.pk, rollout_hash=rollout.rollout_hash
    )


def _settled(rollout_id: int) -> Rollout | None:
    """Return the rollout once it is no longer running (paused or finished)."""
    return Rollout.objects.exclude(status=Rollout.Status.RUNNING).filter(pk=rollout_id).first()


def _heads() -> dict[str, tuple[str, ...]]:
    """Read every member's heads with the dashboard's own reader."""
    config = current_config()
    members = config.members_of(FLEET)
    readings = versions.read_many([(m, config.projects[m.project]) for m in members])
    assert all(r.ok for r in readings), [r.error for r in readings if not r.ok][:3]
    return {m.member or "": r.heads for m, r in zip(members, readings, strict=True)}


def _span(member: Action) -> tuple[datetime, datetime]:
    """Return when a member that ran started and finished."""
    assert member.started_at is not None and member.finished_at is not None, member.status
    return member.started_at, member.finished_at


def _report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n{line}")


def test_two_hundred_tenants_at_two_revisions_reach_the_heads_in_waves_at_most_eight_at_once(
    settings: Any,
    tmp_path: Path,
    tenants: Tenants,
    people: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    began = time.monotonic()
    names = [f"t{n:03d}" for n in range(200)]
    at_mid = names[1::4]  # 50 tenants at the branch point, spread over every wave
    tenants.create([n for n in names if n not in at_mid])
    tenants.create(at_mid, revision=MID)
    config = _configure(settings, tmp_path, tenants, names, waves=[1, "10%", "100%"], parallel=8)
    set_up = time.monotonic() - began

    rollout = rollouts.rollout_request(
        user=people["olga"], fleet=FLEET, direction="upgrade", target="heads", prepare=True
    )
    assert sorted((g["from_heads"], len(g["members"])) for g in rollout.groups) == [
        ([], 150),
        ([MID], 50),
    ]
    assert rollout.wave_sizes == [1, 19, 180]
    workers = Workers(config, tmp_path / "workers.log")
    workers.start(3)
    try:
        rolled = time.monotonic()
        rollouts.rollout_approve(
            user=people["alan"], rollout_id=rollout.pk, rollout_hash=rollout.rollout_hash
        )
        done = wait_for(lambda: _settled(rollout.pk), within=240, every=0.5)
        rolled = time.monotonic() - rolled
    finally:
        workers.stop()
    assert done.status == Rollout.Status.SUCCEEDED, f"{done.error}\n{workers.tail()}"

    assert _heads() == dict.fromkeys(names, (HEAD,))
    members = list(Action.objects.filter(rollout=rollout))
    assert len(members) == 200 and {m.status for m in members} == {Action.Status.SUCCEEDED}
    # The canary ran alone: every other member started after it had finished.
    spans = {m.pk: _span(m) for m in members}
    (canary,) = [spans[m.pk] for m in members if m.wave == 1]
    assert canary[1] <= min(spans[m.pk][0] for m in members if m.wave != 1)
    # Wave 2 ended before wave 3 began.
    assert max(spans[m.pk][1] for m in members if m.wave == 2) <= min(
        spans[m.pk][0] for m in members if m.wave == 3
    )
    at_once = most_at_once(spans.values())
    assert 1 < at_once <= 8
    ran_on = {m.worker for m in members}
    assert len(ran_on) == 3, ran_on  # every worker took members
    median = statistics.median((end - start).total_seconds() for start, end in spans.values())
    _report(
        capsys,
        f"fleet rollout: 200 PostgreSQL tenants (2 plans) to heads in {rolled:.1f} s with 3"
        f" workers, parallel 8 (at most {at_once} at once, median member {median:.2f} s);"
        f" set-up {set_up:.1f} s, whole test {time.monotonic() - began:.1f} s",
    )


WAVES = [1, "10%", "50%", "100%"]  # 30 members: waves of 1, 2, 12 and 15
THIRTY = [f"t{n:02d}" for n in range(30)]
# Three tenants of wave 3 (t03-t14), the first two among the eight it queues at once.
BROKEN = ["t05", "t09", "t13"]


def _thirty_with_three_broken(tenants: Tenants) -> None:
    tenants.create(THIRTY)
    for name in BROKEN:
        tenants.execute(name, BREAK)


def test_three_failing_members_pause_the_rollout_in_their_wave_and_resume_skips_them(
    settings: Any, tmp_path: Path, tenants: Tenants, people: dict[str, Any]
) -> None:
    _thirty_with_three_broken(tenants)
    config = _configure(settings, tmp_path, tenants, THIRTY, waves=WAVES, parallel=8)
    rollout = _approved(people)
    assert rollout.wave_sizes == [1, 2, 12, 15]
    members = Action.objects.filter(rollout=rollout)
    assert sorted(members.filter(wave=3).values_list("environment", flat=True)) == [
        f"{FLEET}/t{n:02d}" for n in range(3, 15)
    ]
    workers = Workers(config, tmp_path / "workers.log")
    workers.start(2)
    pauses: list[Rollout] = []
    try:
        while True:
            settled = wait_for(lambda: _settled(rollout.pk), within=120, every=0.2)
            if settled.status != Rollout.Status.PAUSED:
                break
            # A member that was queued when the first failed may fail after a resume: it pauses
            # again, still in wave 3, and the next resume skips it too.
            assert len(pauses) < len(BROKEN), settled.paused_reason
            pauses.append(settled)
            assert settled.current_wave == 3, settled.paused_reason
            assert any(name in settled.paused_reason for name in BROKEN)
            # No member of the last wave has started, nor will while it is paused.
            last = members.filter(wave=4)
            assert set(last.values_list("status", flat=True)) == {Action.Status.APPROVED}
            assert not last.filter(started_at__isnull=False).exists()
            failed = set(
                members.filter(status=Action.Status.FAILED).values_list("environment", flat=True)
            )
            assert failed and failed <= {f"{FLEET}/{name}" for name in BROKEN}
            resumed = rollouts.rollout_resume(user=people["olga"], rollout_id=rollout.pk)
            # A broken member still running when the failures were read may have failed since.
            assert failed <= set(resumed.skipped) <= {f"{FLEET}/{name}" for name in BROKEN}
    finally:
        workers.stop()
    assert pauses, "the rollout never paused"
    assert settled.status == Rollout.Status.SUCCEEDED, f"{settled.error}\n{workers.tail()}"
    assert settled.skipped == [f"{FLEET}/{name}" for name in BROKEN]
    for member in members.filter(environment__in=settled.skipped):
        assert member.status == Action.Status.FAILED and "users" in member.error, member.error
    assert members.filter(status=Action.Status.SUCCEEDED).count() == 27
    # The last wave started once every member of wave 3 had ended, the skipped ones too.
    assert max(_span(m)[1] for m in members.filter(wave=3)) <= min(
        _span(m)[0] for m in members.filter(wave=4)
    )
    heads = _heads()
    assert {name for name, found in heads.items() if found != (HEAD,)} == set(BROKEN)
    assert all(heads[name] == () for name in BROKEN)  # each one's failed revision rolled back


def test_with_continue_every_other_member_finishes_and_the_three_failures_are_listed(
    settings: Any, tmp_path: Path, tenants: Tenants, people: dict[str, Any]
) -> None:
    _thirty_with_three_broken(tenants)
    config = _configure(
        settings, tmp_path, tenants, THIRTY, waves=WAVES, parallel=8, on_error="continue"
    )
    rollout = _approved(people)
    workers = Workers(config, tmp_path / "workers.log")
    workers.start(2)
    try:
        done = wait_for(lambda: _settled(rollout.pk), within=120, every=0.2)
    finally:
        workers.stop()
    assert done.status == Rollout.Status.FAILED, f"{done.status}\n{workers.tail()}"
    members = Action.objects.filter(rollout=rollout)
    failed = members.filter(status=Action.Status.FAILED).order_by("environment")
    assert [m.environment for m in failed] == [f"{FLEET}/{name}" for name in BROKEN]
    assert all("users" in m.error for m in failed), [m.error for m in failed]
    assert members.filter(status=Action.Status.SUCCEEDED).count() == 27
    for name in BROKEN:
        assert name in done.error
    heads = _heads()
    assert {name for name, found in heads.items() if found != (HEAD,)} == set(BROKEN)


def _running_member(rollout_id: int, pids: set[int]) -> Action | None:
    """Return a wave-2 member one of our workers runs, once Alembic has begun its steps."""
    for member in Action.objects.filter(
        rollout_id=rollout_id, wave=2, status=Action.Status.RUNNING, progress_done__gte=1
    ):
        if int(member.worker.rsplit(":", 1)[1]) in pids:
            return member
    return None


def test_a_worker_killed_mid_rollout_leaves_its_member_interrupted_and_the_rest_go_on(
    settings: Any,
    tmp_path: Path,
    tenants: Tenants,
    people: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = [f"t{n:02d}" for n in range(8)]
    tenants.create(names)
    config = _configure(
        settings, tmp_path, tenants, names, waves=[1, "100%"], parallel=2, on_error="continue"
    )
    rollout = _approved(people)
    # Each revision sleeps before its DDL, so a member runs for seconds; housekeeping gives up
    # on a silent run after HEARTBEAT_LIMIT.
    workers = Workers(
        config, tmp_path / "workers.log", MIGRATIONS_PROJECT_SLEEP="0.3", **FAST_HOUSEKEEPING
    )
    workers.start(2)
    try:
        pids = {proc.pid for proc in workers.procs}
        victim = wait_for(lambda: _running_member(rollout.pk, pids), within=90, every=0.1)
        killed_pid = int(victim.worker.rsplit(":", 1)[1])
        os.kill(killed_pid, signal.SIGKILL)
        killed_at = timezone.now()
        done = wait_for(lambda: _settled(rollout.pk), within=120, every=0.2)
    finally:
        workers.stop()
        for orphan in alembic_processes(tenants.prefix):
            os.kill(orphan, signal.SIGKILL)  # started by our worker: never leak it
    assert done.status == Rollout.Status.FAILED, f"{done.status}\n{workers.tail()}"
    victim.refresh_from_db()
    assert victim.status == Action.Status.INTERRUPTED
    assert "stopped heartbeating" in victim.error
    members = Action.objects.filter(rollout=rollout).exclude(pk=victim.pk)
    assert {m.status for m in members} == {Action.Status.SUCCEEDED}
    # The survivor kept going: members started after the kill, all on the other worker.
    later = [m for m in members if _span(m)[0] > killed_at]
    assert later, "no member started after the kill"
    assert {int(m.worker.rsplit(":", 1)[1]) for m in later} == pids - {killed_pid}
    assert victim.environment.split("/", 1)[1] in done.error
    heads = _heads()
    victim_name = victim.environment.split("/", 1)[1]
    assert all(found == (HEAD,) for name, found in heads.items() if name != victim_name)
    _report(
        capsys,
        f"fleet rollout with a killed worker: {victim.environment} interrupted"
        f" {(_span(victim)[1] - killed_at).total_seconds():.1f} s after the kill;"
        f" {len(later)} members started afterwards on the other worker",
    )
