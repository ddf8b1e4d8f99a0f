"""The multiple-heads guard: `manage.py heads --check`, and the banner on graph, overview and API."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from dashboard.services import status
from tests.statusenv import ROOT, SAMPLE, empty_sqlite, write_config, write_versions

pytestmark = pytest.mark.django_db

FIXTURES = Path(__file__).resolve().parent / "heads_fixtures"
TWO_HEADS_INI = FIXTURES / "two_heads" / "alembic.ini"
LABELLED = FIXTURES / "labelled"
ACCOUNTS = "a1b2c3d4e5f6"
EMAIL = "b7c8d9e0f1a2"  # one head
ORDERS = "c3d4e5f6a7b8"  # first revision of the other head's own branch
INDEX = "d5e6f7a8b9c0"  # the other head
MERGE = f'alembic -c {TWO_HEADS_INI} merge -m "merge heads" {EMAIL} {INDEX}'


def heads(*args: str) -> tuple[int, str]:
    """Run `manage.py heads` in-process; return its exit code and output."""
    out = io.StringIO()
    try:
        call_command("heads", *args, stdout=out)
    except SystemExit as exc:
        return int(exc.code or 0), out.getvalue()
    except CommandError as exc:
        return exc.returncode, str(exc)
    return 0, out.getvalue()


@pytest.fixture
def shop(settings: Any, tmp_path: Path) -> dict[str, str]:
    """Configure the two-head project with SQLite environments; return their database URLs."""
    urls = {name: empty_sqlite(tmp_path / f"{name}.db") for name in ("dev", "qa", "staging")}
    path = write_config(
        tmp_path / f"dashboard-{time.monotonic_ns()}.toml",
        {name: {"project": "shop", "url": url} for name, url in urls.items()},
        {"shop": {"alembic_ini": str(TWO_HEADS_INI)}},
    )
    settings.DASHBOARD_CONFIG = str(path)
    return urls


def applied(urls: dict[str, str], **version_heads: list[str]) -> None:
    """Put these heads in the environments' version tables and store real reads of them."""
    for name, revs in version_heads.items():
        write_versions(urls[name], revs)
    status.status_refresh()


@pytest.fixture
def viewer(client: Client) -> Client:
    call_command("adduser", "vic", role="viewer", password="correct-horse-9")
    client.login(username="vic", password="correct-horse-9")
    return client


def test_two_heads_fail_the_check_naming_where_each_is_applied(shop: dict[str, str]) -> None:
    applied(shop, dev=[EMAIL], qa=[EMAIL], staging=[ORDERS])
    code, out = heads("--check", "--project", "shop")
    assert code == 1
    assert (
        f"2 heads that no branch label separates: {EMAIL} on dev, qa;"
        f" {INDEX} nowhere (part of its branch on staging)." in out
    )
    assert f"Join them with: {MERGE}" in out
    # Staging ran part of the other branch: moving it would rewrite what staging applied.
    assert "re-parent" not in out


def test_one_head_applied_nowhere_may_be_re_parented_instead(shop: dict[str, str]) -> None:
    applied(shop, dev=[EMAIL], qa=[ACCOUNTS])
    code, out = heads("--check", "--project", "shop")
    assert code == 1
    assert f"{EMAIL} on dev; {INDEX} nowhere." in out
    assert MERGE in out
    orders = TWO_HEADS_INI.parent / "versions" / f"{ORDERS}_create_orders.py"
    assert (
        f"Or: {INDEX} is applied nowhere, so re-parenting it is safe instead: in {orders}"
        f" set down_revision = '{EMAIL}' (instead of '{ACCOUNTS}')." in out
    )


def test_a_path_of_no_configured_project_fails_without_places(
    settings: Any, tmp_path: Path
) -> None:
    settings.DASHBOARD_CONFIG = str(write_config(tmp_path / "empty.toml", {}, {}))
    code, out = heads("--check", "--alembic-ini", str(TWO_HEADS_INI))
    assert code == 1
    assert f"{EMAIL}; {INDEX} (no stored snapshots say where they are applied)." in out
    assert MERGE in out
    # A bare script directory has no alembic.ini of its own to name.
    copy = shutil.copytree(TWO_HEADS_INI.parent, tmp_path / "copy")
    code, out = heads("--check", "--script-location", str(copy))
    assert code == 1
    assert f'Join them with: alembic merge -m "merge heads" {EMAIL} {INDEX}' in out


def test_labelled_branches_and_the_sample_pass(settings: Any, tmp_path: Path) -> None:
    settings.DASHBOARD_CONFIG = str(write_config(tmp_path / "empty.toml", {}, {}))
    assert heads("--check", "--script-location", str(LABELLED)) == (
        0,
        f"OK: {LABELLED} has 3 heads, each on its own labelled branch\n",
    )
    assert heads("--check", "--script-location", str(SAMPLE)) == (0, f"OK: {SAMPLE} has 1 head\n")


def test_bad_arguments_exit_2(shop: dict[str, str], tmp_path: Path) -> None:
    code, message = heads("--check", "--project", "nope")
    assert code == 2 and message == "no project named 'nope'; configured projects: shop"
    code, message = heads("--check", "--script-location", str(tmp_path / "missing"))
    assert code == 2 and "is not a directory" in message
    (tmp_path / "empty").mkdir()
    code, message = heads("--check", "--script-location", str(tmp_path / "empty"))
    assert code == 2 and "versions does not exist" in message


@pytest.mark.once
def test_the_real_command_line_exits_with_those_codes(tmp_path: Path) -> None:
    config = write_config(tmp_path / "empty.toml", {}, {})
    env = {**os.environ, "DASHBOARD_CONFIG": str(config), "DASHBOARD_INSECURE_DEV_KEY": "1"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", "heads", "--check", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    failed = run("--alembic-ini", str(TWO_HEADS_INI))
    assert failed.returncode == 1, failed.stderr
    assert MERGE in failed.stdout
    passed = run("--script-location", str(SAMPLE))
    assert (passed.returncode, passed.stdout) == (0, f"OK: {SAMPLE} has 1 head\n")
    missing = run("--script-location", str(tmp_path / "missing"))
    assert missing.returncode == 2 and "is not a directory" in missing.stderr


def test_graph_overview_and_api_show_the_banner(viewer: Client, shop: dict[str, str]) -> None:
    applied(shop, dev=[EMAIL], qa=[EMAIL], staging=[ORDERS])
    graph = viewer.get("/projects/shop/graph").content.decode()
    overview = viewer.get("/").content.decode()
    for page in (graph, overview):
        assert page.count('id="heads-guard-shop"') == 1
        assert "shop has 2 heads that no branch label separates" in page
        assert f"{EMAIL} on dev, qa; {INDEX} nowhere (part of its branch on staging)" in page
        assert MERGE.replace('"', "&quot;") in page
    # The overview's poll brings the banner too, out of band.
    poll = viewer.get("/", HTTP_HX_REQUEST="true").content.decode()
    assert '<div id="history-banners" hx-swap-oob="true">' in poll and MERGE[:30] in poll
    document = json.loads(viewer.get("/api/projects/shop/graph").content)
    assert document["heads_guard"] == {
        "ok": False,
        "forks": [
            {
                "labels": [],
                "heads": [
                    {"revision": EMAIL, "applied": ["dev", "qa"], "partly": []},
                    {"revision": INDEX, "applied": [], "partly": ["staging"]},
                ],
                "where": f"{EMAIL} on dev, qa; {INDEX} nowhere (part of its branch on staging)",
                "merge_command": MERGE,
                "reparent": None,
                "unread": [],
            }
        ],
    }


def test_the_banner_names_the_file_to_re_parent(viewer: Client, shop: dict[str, str]) -> None:
    applied(shop, dev=[EMAIL])
    page = viewer.get("/projects/shop/graph").content.decode()
    assert (
        f"{INDEX} is applied nowhere, so re-parenting it is safe instead: in"
        f" versions/{ORDERS}_create_orders.py set down_revision = &#x27;{EMAIL}&#x27;" in page
    )


def test_the_sample_has_no_banner(viewer: Client, settings: Any, tmp_path: Path) -> None:
    settings.DASHBOARD_CONFIG = str(write_config(tmp_path / "blog.toml", {}))
    assert "heads-guard" not in viewer.get("/projects/blog/graph").content.decode()
    assert "heads-guard" not in viewer.get("/").content.decode()
    document = json.loads(viewer.get("/api/projects/blog/graph").content)
    assert document["heads_guard"] == {"ok": True, "forks": []}


def test_an_unparsable_revision_is_a_problem_not_a_head(settings: Any, tmp_path: Path) -> None:
    settings.DASHBOARD_CONFIG = str(write_config(tmp_path / "empty.toml", {}, {}))
    copy = shutil.copytree(TWO_HEADS_INI.parent, tmp_path / "copy")
    index = copy / "versions" / f"{INDEX}_index_orders.py"
    text = index.read_text().replace(f'down_revision = "{ORDERS}"', f'down_revision = "{ORDERS}')
    index.write_text(text, encoding="utf-8")
    code, out = heads("--check", "--script-location", str(copy))
    assert code == 1
    assert "problem(s) Alembic would refuse" in out
    assert f"{INDEX}_index_orders.py cannot be parsed" in out
    # Its parents and labels are unknown: it is never offered to a merge as a head.
    merges = [line for line in out.splitlines() if line.startswith("Join them with")]
    assert all(INDEX not in line for line in merges)


def test_no_re_parenting_while_an_environment_was_never_read(
    viewer: Client, settings: Any, tmp_path: Path
) -> None:
    dev = empty_sqlite(tmp_path / "dev.db")
    write_versions(dev, [EMAIL])
    # Prod's database holds the other head, but the dashboard cannot read it: its URL names
    # a directory. Re-parenting the "unapplied" head would rewrite what prod ran.
    prod = empty_sqlite(tmp_path / "prod.db")
    write_versions(prod, [INDEX])
    (tmp_path / "prod_dir").mkdir()
    path = write_config(
        tmp_path / f"dashboard-{time.monotonic_ns()}.toml",
        {
            "dev": {"project": "shop", "url": dev},
            "prod": {"project": "shop", "url": f"sqlite:///{tmp_path / 'prod_dir'}"},
        },
        {"shop": {"alembic_ini": str(TWO_HEADS_INI)}},
    )
    settings.DASHBOARD_CONFIG = str(path)
    status.status_refresh()

    code, out = heads("--check", "--project", "shop")
    assert code == 1
    assert "re-parent" not in out
    assert f"{EMAIL} on dev; {INDEX} nowhere read; unknown on prod." in out
    assert f"Join them with: {MERGE}" in out
    assert "Nothing was read from prod yet" in out
    page = viewer.get("/projects/shop/graph").content.decode()
    assert "re-parent" not in page
    assert f"{INDEX} nowhere read; unknown on prod" in page
    fork = json.loads(viewer.get("/api/projects/shop/graph").content)["heads_guard"]["forks"][0]
    assert (fork["reparent"], fork["unread"]) == (None, ["prod"])

    # Once prod is read, where each head is applied is known again: nothing is "nowhere".
    settings.DASHBOARD_CONFIG = str(
        write_config(
            tmp_path / f"dashboard-{time.monotonic_ns()}.toml",
            {"dev": {"project": "shop", "url": dev}, "prod": {"project": "shop", "url": prod}},
            {"shop": {"alembic_ini": str(TWO_HEADS_INI)}},
        )
    )
    status.status_refresh()
    code, out = heads("--check", "--project", "shop")
    assert f"{EMAIL} on dev; {INDEX} on prod." in out
    assert "re-parent" not in out and "unknown" not in out


@pytest.mark.once
def test_the_ci_gates_run_without_a_secret_key_and_a_bad_setup_exits_2(tmp_path: Path) -> None:
    config = write_config(tmp_path / "empty.toml", {}, {})
    keyless = {
        name: value
        for name, value in os.environ.items()
        if name not in {"SECRET_KEY", "DASHBOARD_INSECURE_DEV_KEY", "DEBUG"}
    }
    keyless["DJANGO_SETTINGS_MODULE"] = "dashboard.settings"  # tests.settings sets a dev key
    keyless["DASHBOARD_CONFIG"] = str(config)

    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env={**keyless, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    # A CI job holds no SECRET_KEY: exit 1 still means heads, and only that.
    found = run("heads", "--check", "--alembic-ini", str(TWO_HEADS_INI))
    assert found.returncode == 1, found.stderr
    assert MERGE in found.stdout
    one = run("heads", "--check", "--script-location", str(SAMPLE))
    assert (one.returncode, one.stdout) == (0, f"OK: {SAMPLE} has 1 head\n")
    listed = run("revisions", "--script-location", str(SAMPLE))
    assert listed.returncode == 0, listed.stderr
    assert "1 head" in listed.stdout
    # A setup the dashboard refuses is a usage error, never "heads found".
    broken = run("heads", "--check", "--script-location", str(SAMPLE), DATABASE_URL="mysql://h/d")
    assert broken.returncode == 2
    assert broken.stderr == (
        "error: the dashboard is not set up: DATABASE_URL: unsupported database 'mysql'"
        " (use sqlite or postgresql)\n"
    )
    status = run("status", "--fail-unless-current")
    assert status.returncode == 2 and "SECRET_KEY is not set" in status.stderr
    # What signs things still demands the key.
    checked = run("check")
    assert checked.returncode != 0 and "SECRET_KEY is not set" in checked.stderr
