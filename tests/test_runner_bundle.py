"""The approved-bytes reader's page fast path: timestamps may spare a page reads, never a run."""

from __future__ import annotations

import configparser
import os
import shutil
from pathlib import Path

import pytest

from dashboard.config import Project
from dashboard.runner import bundle

ROOT = Path(__file__).resolve().parent.parent
OLD_NS = 1_600_000_000 * 10**9  # a modification time far outside the racy window


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """Copy the sample project with old timestamps, so the page cache may trust them."""
    target = tmp_path / "migrations_project"
    shutil.copytree(
        ROOT / "migrations_project", target, ignore=shutil.ignore_patterns("__pycache__")
    )
    for path in target.rglob("*"):
        os.utime(path, ns=(OLD_NS, OLD_NS))
    return Project(name="blog", script_location=target)


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    reads: list[Path] = []
    real = bundle._read_path

    def counting(path: Path) -> bytes:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(bundle, "_read_path", counting)
    return reads


def test_a_page_reads_only_the_files_whose_stat_moved(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    exact = bundle.bundle_read(project).digest
    assert bundle.page_digest(project) == exact
    reads = _count_reads(monkeypatch)
    assert bundle.page_digest(project) == exact
    assert reads == []
    env = project.script_location / "env.py"
    env.write_text(env.read_text() + "\n# edited\n")
    edited = bundle.page_digest(project)
    assert reads == [env]
    assert edited != exact
    assert edited == bundle.bundle_read(project).digest


def test_a_run_never_trusts_the_timestamps_a_page_may(project: Project) -> None:
    before = bundle.page_digest(project)
    revision = next((project.script_location / "versions").glob("*.py"))
    text = revision.read_text()
    # Same size, same modification time: only reading the bytes tells.
    revision.write_text(text.replace("Upgrade schema.", "Upgrade SCHEMA."))
    os.utime(revision, ns=(OLD_NS, OLD_NS))
    assert bundle.bundle_read(project).digest != before
    assert bundle.page_digest(project) == before


INI_WITH_PASSWORDS = """\
[alembic]
script_location = %(here)s/migrations_project
sqlalchemy.url = postgresql://app:first-secret@db/prod
version_locations = %(here)s/migrations_project/versions

[replica]
SQLAlchemy.URL: mysql://app:second-secret@replica/prod
\t?ssl=1&password=third-secret

    # a comment inside the value
\tand-fourth-secret
next = kept
# sqlalchemy.url = postgresql://old:fifth-secret@db/prod
[empty]
sqlalchemy.url =
    postgresql://app:sixth-secret@db/prod
other = kept too
"""


def test_no_password_of_the_projects_ini_is_read_into_the_approved_files(
    project: Project, tmp_path: Path
) -> None:
    ini = tmp_path / "alembic.ini"
    ini.write_text(INI_WITH_PASSWORDS)
    os.utime(ini, ns=(OLD_NS, OLD_NS))
    with_ini = Project(name="blog", script_location=project.script_location, alembic_ini=ini)

    read = bundle.bundle_read(with_ini)

    stored = read.contents[read.manifest["alembic.ini"]]
    assert b"secret" not in stored
    parsed = configparser.ConfigParser(interpolation=None)
    parsed.read_string(stored.decode())
    assert [parsed[name]["sqlalchemy.url"] for name in ("alembic", "replica", "empty")] == [""] * 3
    assert parsed["replica"]["next"] == "kept" and parsed["empty"]["other"] == "kept too"
    assert parsed["alembic"]["version_locations"] == "%(here)s/migrations_project/versions"
    # Pages, requests and the run's check hash the same emptied bytes.
    assert bundle.page_digest(with_ini) == read.digest == bundle.page_digest(with_ini)
    # Only the URL's value changed: the next password gives the same approved files.
    ini.write_text(INI_WITH_PASSWORDS.replace("first-secret", "rotated"))
    assert bundle.bundle_read(with_ini).digest == read.digest
