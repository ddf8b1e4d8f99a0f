"""Write synthetic Alembic projects: realistic revision files for tests and benchmarks."""

from __future__ import annotations

import argparse
import datetime
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dashboard.runner import LOGGING_SECTIONS

SLUG_WORDS = (
    "add users table",
    "create posts",
    "add votes",
    "add phone number to users",
    "index posts by owner",
    "drop legacy column",
    "add audit log",
    "rename status enum",
    "backfill created at",
    "add unique constraint on email",
    "split address table",
    "add tenant id",
)

ENV_PY = '''\
"""Run this project's revisions; written by tests.genhistory."""

from logging.config import fileConfig

from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with connectable.connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
'''

SCRIPT_MAKO = '''\
"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
${imports if imports else ""}

# revision identifiers, used by Alembic.
revision: str = ${repr(up_revision)}
down_revision: Union[str, Sequence[str], None] = ${repr(down_revision)}
branch_labels: Union[str, Sequence[str], None] = ${repr(branch_labels)}
depends_on: Union[str, Sequence[str], None] = ${repr(depends_on)}


def upgrade() -> None:
    """Upgrade schema."""
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    """Downgrade schema."""
    ${downgrades if downgrades else "pass"}
'''


_slug_re = re.compile(r"\w+")


@dataclass(frozen=True)
class RevisionSpec:
    """One revision file to write: its identifiers, message and folder."""

    revision: str
    down_revisions: tuple[str, ...] = ()
    branch_labels: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    message: str = "empty message"
    folder: str = ""
    create_date: datetime.datetime = field(
        default_factory=lambda: datetime.datetime(2024, 1, 1, 12, 0, 0)
    )

    @property
    def filename(self) -> str:
        """Return the file name Alembic's default file_template would give."""
        slug = "_".join(_slug_re.findall(self.message)).lower()[:40]
        return f"{self.revision}_{slug}.py"


def _scalar(values: tuple[str, ...]) -> str | tuple[str, ...] | None:
    """Return values as Alembic's template writes them: None, one string or a tuple."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return values


def _body(operation: str, columns: int) -> str:
    """Return an upgrade or downgrade body of `columns` column operations, or `pass`."""
    if not columns:
        return "    pass\n"
    if operation == "add":
        return "".join(
            f'    op.add_column("users", sa.Column("extra_{i}", sa.String(length=64),'
            f" nullable=True, server_default=sa.text(\"'none'\")))\n"
            for i in range(columns)
        )
    return "".join(f'    op.drop_column("users", "extra_{i}")\n' for i in range(columns))


def render_revision(spec: RevisionSpec, *, body_lines: int = 0) -> str:
    """Return the text of a revision file shaped like Alembic's generic template."""
    revises = ", ".join(spec.down_revisions)
    return (
        f'"""{spec.message}\n'
        "\n"
        f"Revision ID: {spec.revision}\n"
        f"Revises: {revises}\n"
        f"Create Date: {spec.create_date.isoformat(' ', 'microseconds')}\n"
        "\n"
        '"""\n'
        "from typing import Sequence, Union\n"
        "\n"
        "from alembic import op\n"
        "import sqlalchemy as sa\n"
        "\n"
        "\n"
        "# revision identifiers, used by Alembic.\n"
        f"revision: str = {spec.revision!r}\n"
        f"down_revision: Union[str, Sequence[str], None] = {_scalar(spec.down_revisions)!r}\n"
        f"branch_labels: Union[str, Sequence[str], None] = {_scalar(spec.branch_labels)!r}\n"
        f"depends_on: Union[str, Sequence[str], None] = {_scalar(spec.depends_on)!r}\n"
        "\n"
        "\n"
        "def upgrade() -> None:\n"
        '    """Upgrade schema."""\n'
        f"{_body('add', body_lines)}"
        "\n"
        "\n"
        "def downgrade() -> None:\n"
        '    """Downgrade schema."""\n'
        f"{_body('drop', body_lines)}"
    )


def render_ini(*, recursive: bool, url: str, version_locations: Sequence[str] = ()) -> str:
    """Return an alembic.ini for a generated project."""
    lines = [
        "[alembic]",
        "script_location = %(here)s",
        "path_separator = os",
        f"sqlalchemy.url = {url.replace('%', '%%')}",
    ]
    if recursive:
        lines.append("recursive_version_locations = true")
    if version_locations:
        lines.append("version_locations = " + os.pathsep.join(version_locations))
    return "\n".join(lines) + "\n\n" + LOGGING_SECTIONS


def write_project(
    directory: Path,
    specs: Sequence[RevisionSpec],
    *,
    recursive: bool | None = None,
    url: str = "sqlite://",
    body_lines: int = 0,
) -> Path:
    """Write an Alembic project (alembic.ini, env.py, versions/) and return its alembic.ini."""
    if recursive is None:
        recursive = any(spec.folder for spec in specs)
    versions = directory / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    ini = directory / "alembic.ini"
    ini.write_text(render_ini(recursive=recursive, url=url))
    (directory / "env.py").write_text(ENV_PY)
    (directory / "script.py.mako").write_text(SCRIPT_MAKO)
    folders: set[Path] = set()
    for spec in specs:
        folder = versions / spec.folder if spec.folder else versions
        if folder not in folders:
            folder.mkdir(parents=True, exist_ok=True)
            folders.add(folder)
        (folder / spec.filename).write_text(render_revision(spec, body_lines=body_lines))
    return ini


@dataclass
class _Line:
    """A line of development being extended while the history is generated."""

    tip: str
    label: str | None = None
    remaining: int = 0  # feature branches: revisions left before merging back
    forked_from: str = ""


def random_history(count: int, *, seed: int = 0, linear: bool = False) -> list[RevisionSpec]:
    """Return `count` revisions shaped like a long-lived project's history."""
    # A main line with short feature branches merged back, a few labelled plugin branches
    # (some with their own base) and depends_on links between them; or one line if `linear`.
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    used: set[str] = set()
    specs: list[RevisionSpec] = []
    start = datetime.datetime(2015, 1, 1, 9, 0, 0)

    def new_id() -> str:
        while True:
            rev = f"{rng.getrandbits(48):012x}"
            if rev not in used:
                used.add(rev)
                return rev

    def add(
        down: tuple[str, ...],
        *,
        labels: tuple[str, ...] = (),
        depends_on: tuple[str, ...] = (),
    ) -> str:
        rev = new_id()
        when = start + datetime.timedelta(hours=7 * len(specs), seconds=rng.randrange(3600))
        message = rng.choice(SLUG_WORDS)
        specs.append(
            RevisionSpec(
                revision=rev,
                down_revisions=down,
                branch_labels=labels,
                depends_on=depends_on,
                message=message,
                folder=f"{when.year}/{when.month:02d}",
                create_date=when,
            )
        )
        return rev

    main = _Line(tip=add(()))
    features: list[_Line] = []
    labeled: list[_Line] = []
    main_history: list[str] = [main.tip]
    while len(specs) < count:
        roll = 1.0 if linear else rng.random()
        if roll < 0.035:
            features.append(_Line(tip=main.tip, remaining=rng.randint(1, 6), forked_from=main.tip))
        elif roll < 0.037 and len(labeled) < 4:
            label = f"plugin_{len(labeled) + 1}"
            if rng.random() < 0.5:
                tip = add((), labels=(label,))
            else:
                tip = add((main.tip,), labels=(label,))
            labeled.append(_Line(tip=tip, label=label))
        elif roll < 0.10 and labeled:
            line = rng.choice(labeled)
            depends: tuple[str, ...] = ()
            if rng.random() < 0.3:
                depends = (rng.choice(main_history[-50:]),)
            line.tip = add((line.tip,), depends_on=depends)
        elif roll < 0.35 and features:
            line = rng.choice(features)
            line.tip = add((line.tip,))
            line.remaining -= 1
            if line.remaining <= 0:
                features.remove(line)
                if main.tip == line.forked_from:
                    main.tip = line.tip
                else:
                    main.tip = add((main.tip, line.tip))
                main_history.append(main.tip)
        else:
            depends = ()
            if labeled and rng.random() < 0.01:
                depends = (rng.choice(labeled).label or "",)
            main.tip = add((main.tip,), depends_on=depends)
            main_history.append(main.tip)
    return specs


def generate(
    directory: Path,
    *,
    revisions: int,
    seed: int = 0,
    linear: bool = False,
    body_lines: int = 0,
) -> Path:
    """Write a random project of `revisions` revision files and return its alembic.ini."""
    specs = random_history(revisions, seed=seed, linear=linear)
    return write_project(directory, specs, recursive=True, body_lines=body_lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Write a synthetic Alembic project from the command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--revisions", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--linear", action="store_true", help="one unbranched line")
    parser.add_argument("--body-lines", type=int, default=0, help="column operations per step")
    args = parser.parse_args(argv)
    ini = generate(
        args.directory,
        revisions=args.revisions,
        seed=args.seed,
        linear=args.linear,
        body_lines=args.body_lines,
    )
    print(ini)


if __name__ == "__main__":
    main()
