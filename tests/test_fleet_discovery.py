"""Fleet members found by a query on real PostgreSQL: databases per tenant, schemas per tenant."""

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from dashboard.config import current_config
from dashboard.models import AuditEvent, FleetDiscovery, FleetMember, Snapshot
from dashboard.runner import process
from dashboard.services import fleets, status
from dashboard.states import State
from dashboard.tasks import discover_fleets_periodically
from tests.databases import PG_ADMIN_URL, need_server, postgres_database
from tests.fakeserver import closed_port
from tests.statusenv import EARLY, HEAD, MID, PASSWORD, SAMPLE, alembic

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


def write_fleet_config(path: Path, fleet: str, table: dict[str, Any]) -> Path:
    """Write a config with the sample project and one fleet of it."""
    lines = ["[projects.blog]", f"script_location = {json.dumps(str(SAMPLE))}", ""]
    lines += [f"[fleets.{fleet}]", 'project = "blog"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def admin_engine() -> sa.Engine:
    return sa.create_engine(PG_ADMIN_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT")


def database_url(name: str) -> str:
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def tenant_databases() -> Iterator[tuple[str, list[str]]]:
    """Create five databases dfleet_<random>_N at MID from a template; drop them after."""
    need_server(PG_ADMIN_URL, "PostgreSQL")
    tag = uuid.uuid4().hex[:8]
    template = f"tplfleet_{tag}"  # outside the fleet's LIKE pattern
    names = [f"dfleet_{tag}_{n}" for n in range(1, 6)]
    admin = admin_engine()
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{template}"'))
    try:
        alembic(database_url(template), "upgrade", MID)
        with admin.connect() as conn:
            for name in names:
                conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        yield tag, names
    finally:
        with admin.connect() as conn:
            for name in [template, *names]:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def events(verb: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(verb=verb).order_by("id"))


def test_names_query_members_appear_vanish_and_survive_a_failed_query(
    tmp_path: Path, settings: Any, tenant_databases: tuple[str, list[str]]
) -> None:
    tag, names = tenant_databases
    template = PG_ADMIN_URL.rsplit("/", 1)[0] + "/{name}"
    query = (
        f"SELECT datname FROM pg_database WHERE datname LIKE 'dfleet_{tag}_%'"  # noqa: S608
        " UNION ALL SELECT 'not/a name'"
    )
    fleet = {"url_template": template, "names_query": query, "discovery_url": PG_ADMIN_URL}
    settings.DASHBOARD_CONFIG = str(write_fleet_config(tmp_path / "a.toml", "tenants", fleet))

    # The task: a fleet never looked at is due; its new members are read at once.
    assert discover_fleets_periodically.call() == 1
    members = current_config().members_of("tenants")
    assert [m.name for m in members] == [f"tenants/{n}" for n in names]
    assert [m.database_url() for m in members] == [database_url(n) for n in names]
    [appeared] = events(fleets.APPEARED)
    assert appeared.actor_name == "system"
    assert appeared.payload == {"fleet": "tenants", "members": names, "count": 5}
    looked = FleetDiscovery.objects.get(fleet="tenants")
    assert looked.members == 5
    assert "'not/a name' is left out" in looked.error
    for name in names:
        snapshot = Snapshot.objects.filter(environment=f"tenants/{name}").get()
        assert (snapshot.state, snapshot.heads) == (State.BEHIND, [MID])
    # Not due again until discovery_interval (300 s) has passed.
    assert fleets.fleets_discover_due() == []

    admin = admin_engine()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE "{names[2]}" WITH (FORCE)'))
    admin.dispose()
    [found] = fleets.fleets_discover()
    assert found.vanished == (names[2],) and found.appeared == ()
    [vanished] = events(fleets.VANISHED)
    assert vanished.payload == {"fleet": "tenants", "members": [names[2]], "count": 1}
    kept = [n for n in names if n != names[2]]
    assert [m.member for m in current_config().members_of("tenants")] == kept

    # A round that changes nothing audits nothing.
    fleets.fleets_discover(fleets=["tenants"])
    assert len(events(fleets.APPEARED)) == 1 and len(events(fleets.VANISHED)) == 1

    # Unreachable discovery database, then bad SQL echoing the password: errors, members kept.
    dead = f"postgresql+psycopg2://postgres:{PASSWORD}@127.0.0.1:{closed_port()}/postgres"
    settings.DASHBOARD_CONFIG = str(
        write_fleet_config(tmp_path / "b.toml", "tenants", {**fleet, "discovery_url": dead})
    )
    [found] = fleets.fleets_discover()
    assert not found.ok and "connection refused" in found.error
    looked = FleetDiscovery.objects.get(fleet="tenants")
    assert "connection refused" in looked.error and looked.members == 4
    with_password = make_url(PG_ADMIN_URL).set(password=PASSWORD)
    settings.DASHBOARD_CONFIG = str(
        write_fleet_config(
            tmp_path / "c.toml",
            "tenants",
            {
                **fleet,
                "discovery_url": with_password.render_as_string(hide_password=False),
                "names_query": f'SELECT datname FROM "{PASSWORD}"',  # noqa: S608
            },
        )
    )
    [found] = fleets.fleets_discover()
    looked = FleetDiscovery.objects.get(fleet="tenants")
    assert "does not exist" in looked.error and PASSWORD not in looked.error
    assert [m.member for m in current_config().members_of("tenants")] == kept
    assert len(events(fleets.VANISHED)) == 1
    assert sorted(FleetMember.objects.values_list("name", flat=True)) == kept


def test_a_failing_fleet_does_not_stop_the_others(tmp_path: Path, settings: Any) -> None:
    need_server(PG_ADMIN_URL, "PostgreSQL")
    path = tmp_path / "two.toml"
    write_fleet_config(
        path,
        "broken",
        {
            "url_template": PG_ADMIN_URL.rsplit("/", 1)[0] + "/{name}",
            "names_query": "SELEC datname",
            "discovery_url": PG_ADMIN_URL,
        },
    )
    with path.open("a", encoding="utf-8") as config:
        config.write(
            '\n[fleets.fine]\nproject = "blog"\n'
            f"url_template = {json.dumps(PG_ADMIN_URL.rsplit('/', 1)[0] + '/{name}')}\n"
            "names_query = \"SELECT 'postgres'\"\n"
            f"discovery_url = {json.dumps(PG_ADMIN_URL)}\n"
        )
    settings.DASHBOARD_CONFIG = str(path)
    found = {d.fleet: d for d in fleets.fleets_discover()}
    assert "syntax error" in found["broken"].error
    assert found["fine"].ok and found["fine"].appeared == ("postgres",)
    assert [m.name for m in current_config().members_of("fine")] == ["fine/postgres"]


# Schema per tenant: what each of the first schemas is brought to; the others stay empty.
SCHEMA_TARGETS = {"tenant_1": HEAD, "tenant_2": MID, "tenant_3": EARLY, "tenant_4": HEAD}


def test_schemas_query_members_each_have_their_own_version_table(
    tmp_path: Path, settings: Any
) -> None:
    with postgres_database() as url:
        engine = sa.create_engine(url, poolclass=NullPool)
        with engine.begin() as conn:
            for n in range(1, 51):
                conn.execute(sa.text(f"CREATE SCHEMA tenant_{n}"))
        fleet = {
            "schemas_query": r"SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant\_%'",
            "discovery_url": url,
        }
        settings.DASHBOARD_CONFIG = str(write_fleet_config(tmp_path / "s.toml", "shop", fleet))
        [found] = fleets.fleets_discover()
        assert len(found.appeared) == 50 and found.problems == ()
        config = current_config()
        members = {m.member: m for m in config.members_of("shop")}
        assert set(members) == {f"tenant_{n}" for n in range(1, 51)}

        project = config.projects["blog"]

        def upgrade(schema: str) -> process.RunResult:
            return process.upgrade(
                project, members[schema].database_url(), SCHEMA_TARGETS[schema], time_limit=120
            )

        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(upgrade, SCHEMA_TARGETS))
        assert all(r.succeeded for r in results), [r.output_tail for r in results]

        snapshots = {
            s.environment: s
            for s in status.status_refresh(environments=[m.name for m in members.values()])
        }
        for schema, member in members.items():
            snapshot = snapshots[member.name]
            if schema in SCHEMA_TARGETS:
                assert snapshot.heads == [SCHEMA_TARGETS[schema]], schema
            else:
                assert (snapshot.state, snapshot.heads) == (State.UNINITIALIZED, []), schema
        assert snapshots["shop/tenant_1"].state == State.CURRENT
        assert snapshots["shop/tenant_2"].state == State.BEHIND

        with engine.connect() as conn:
            tables = conn.execute(
                sa.text(
                    "SELECT table_schema, table_name FROM information_schema.tables"
                    " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
                )
            ).all()
            versions = {
                schema: conn.scalar(sa.text(f"SELECT version_num FROM {schema}.alembic_version"))  # noqa: S608
                for schema in SCHEMA_TARGETS
            }
        engine.dispose()
        where = {(schema, table) for schema, table in tables}
        assert {schema for schema, _ in where} == set(SCHEMA_TARGETS)
        assert {("tenant_1", "alembic_version"), ("tenant_1", "posts")} <= where
        assert versions == SCHEMA_TARGETS
