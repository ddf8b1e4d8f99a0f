"""The approved-bytes reader's page fast path: timestamps may spare a page reads, never a run."""

from __future__ import annotations

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
