"""The config file: every mistake is a clear error naming the file, the table and the key."""

import subprocess
import sys
from pathlib import Path

import pytest

from dashboard.config import ConfigError, NotConfigured, load_config, mask_url

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "scripts").mkdir(exist_ok=True)
    path = tmp_path / "dashboard.toml"
    path.write_text(text)
    return path


GOOD = """
[projects.blog]
script_location = "scripts"
version_table = "my_versions"
version_table_schema = "meta"

[environments.staging]
project = "blog"
url_env = "STAGING_DATABASE_URL"
timeout = 3
approvals_required = 1
downgrade_approvals_required = 2
order = 2
description = "Release candidates"

[environments.dev]
project = "blog"
url = "sqlite:///dev.db"
"""


def test_good_config_reads_every_key(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    blog = config.projects["blog"]
    assert blog.script_location == tmp_path / "scripts"
    assert (blog.version_table, blog.version_table_schema) == ("my_versions", "meta")
    staging = config.environments["staging"]
    assert staging.timeout == 3.0
    assert staging.approvals_for("upgrade") == 1
    assert staging.approvals_for("downgrade") == 2
    dev = config.environments["dev"]
    # A relative SQLite path is anchored at the config file, not the working directory.
    assert dev.database_url() == f"sqlite:///{tmp_path / 'dev.db'}"
    assert dev.approvals_for("downgrade") == 0
    assert [e.name for e in config.environments_of("blog")] == ["dev", "staging"]


def test_downgrade_approvals_default_to_upgrade_approvals(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD.replace("downgrade_approvals_required = 2\n", "")))
    assert config.environments["staging"].approvals_for("downgrade") == 1


def test_unset_url_env_is_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STAGING_DATABASE_URL", raising=False)
    staging = load_config(write(tmp_path, GOOD)).environments["staging"]
    with pytest.raises(NotConfigured, match="not configured: STAGING_DATABASE_URL is not set"):
        staging.database_url()
    monkeypatch.setenv("STAGING_DATABASE_URL", "postgresql+psycopg2://app:hunter2@db.example/app")
    assert staging.database_url() == "postgresql+psycopg2://app:hunter2@db.example/app"
    assert "hunter2" not in staging.display_url()
    assert "hunter2" not in repr(staging)


def test_mask_url_hides_the_password() -> None:
    assert mask_url("postgresql://u:s3cret@h/db") == "postgresql://u:***@h/db"
    assert "s3cret" not in mask_url("mysql+pymysql://u:s3cret@h:3306/db")


BAD = [
    ("[projects.blog\n", r"dashboard\.toml: not valid TOML"),
    ('colour = "blue"\n', r"unknown top-level key 'colour'"),
    (
        '[projects.blog]\nscript_location = "scripts"\nflavour = 1\n',
        r"\[projects\.blog\] unknown key 'flavour'",
    ),
    (
        "[projects.blog]\n",
        r"\[projects\.blog\] needs exactly one of script_location or alembic_ini",
    ),
    (
        '[projects.blog]\nscript_location = "nowhere"\n',
        r"\[projects\.blog\] script_location .*nowhere does not exist",
    ),
    (
        '[projects.blog]\nalembic_ini = "alembic.ini"\n',
        r"\[projects\.blog\] alembic_ini .*alembic\.ini does not exist",
    ),
    (
        '[projects.blog]\nscript_location = "scripts"\n[environments.prod]\nproject = "shop"\nurl = "sqlite://"\n',
        r"\[environments\.prod\] project 'shop' is not defined in \[projects\]",
    ),
    (
        '[projects.blog]\nscript_location = "scripts"\n[environments.prod]\nproject = "blog"\n',
        r"\[environments\.prod\] needs exactly one of url or url_env",
    ),
    (
        '[projects.blog]\nscript_location = "scripts"\n[environments.prod]\nproject = "blog"\n'
        'url = "sqlite://"\nurl_env = "PROD_URL"\n',
        r"\[environments\.prod\] needs exactly one of url or url_env",
    ),
    (
        '[projects.blog]\nscript_location = "scripts"\n[environments.prod]\nproject = "blog"\n'
        'url_env = "X"\ntimeout = "soon"\n',
        r"\[environments\.prod\] timeout must be a number, not 'soon'",
    ),
    (
        '[projects.blog]\nscript_location = "scripts"\n[environments.prod]\nproject = "blog"\n'
        'url_env = "X"\napprovals_required = -1\n',
        r"\[environments\.prod\] approvals_required must not be negative",
    ),
    (
        '[projects.blog]\nscript_location = "scripts"\n[environments.prod]\nproject = "blog"\n'
        'url_env = "X"\nwhatever = true\n',
        r"\[environments\.prod\] unknown key 'whatever'",
    ),
    (
        '[projects.blog]\nscript_location = "scripts"\nloader = "alembic"\n',
        r"\[projects\.blog\] loader = \"alembic\" needs python",
    ),
    (
        '[projects.blog]\nscript_location = "scripts"\n[environments.prod]\nproject = "blog"\n'
        'url_env = "X"\ntimeout = inf\n',
        r"\[environments\.prod\] timeout must be a number of seconds above 0 and at most 3600",
    ),
    (
        '[projects.blog]\nscript_location = "scripts"\n[environments.prod]\nproject = "blog"\n'
        'url_env = "X"\ntime_limit = nan\n',
        r"\[environments\.prod\] time_limit must be a number of seconds above 0",
    ),
    (
        '[projects.blog]\nscript_location = "scripts"\n[environments.prod]\nproject = "blog"\n'
        'url_env = "X"\norder = 1.5\n',
        r"\[environments\.prod\] order must be an integer, not 1\.5",
    ),
    (
        '[projects.blog]\nscript_location = "scripts"\n[environments."a/b"]\nproject = "blog"\n'
        'url_env = "X"\n',
        r"environment name 'a/b' must start with a letter or digit",
    ),
    (
        '[projects.""]\nscript_location = "scripts"\n',
        r"project name '' must start with a letter or digit",
    ),
    ("projects = 3\n", r"\[projects\] must be a table"),
    # Only a URL's NUL is that environment's alone; elsewhere it is a config mistake.
    (
        '[projects.blog]\nscript_location = "scripts"\n[environments.prod]\nproject = "blog"\n'
        'url_env = "X"\ndescription = "a\\u0000b"\n',
        r"\[environments\.prod\] description must not hold a NUL character",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_config_names_file_table_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


BAD_URLS = [
    ("postgresql://u:pw-in-here@x@db.example/app", r"write an '@' .* as %40"),
    ("postgresql://u:pw-in-here@db.example:5432x/app", r"not a database URL\Z"),
    ("pw-in-here:::", r"not a database URL\Z"),
    ("postgresql://u:pw-in-here@db.example:99999/app", r"its port is not between 1 and 65535"),
    ("postgresql://u:pw-in-here@db.example:0/app", r"its port is not between 1 and 65535"),
    # No '@': make_url takes the user for the host and the password for a port.
    ("postgresql://admin:123456789/app", r"its port is not between 1 and 65535"),
    (r"postgresql://u:pw-in-here@db.example/app\u0000", r"it holds a NUL character\Z"),
]


@pytest.mark.parametrize(("url", "why"), BAD_URLS)
def test_a_bad_url_fails_its_environment_alone_naming_file_table_and_key(
    tmp_path: Path, url: str, why: str
) -> None:
    text = (
        '[projects.blog]\nscript_location = "scripts"\n'
        f'[environments.prod]\nproject = "blog"\nurl = "{url}"\n'
        '[environments.dev]\nproject = "blog"\nurl = "sqlite:///dev.db"\n'
    )
    path = write(tmp_path, text)
    config = load_config(path)
    prod = config.environments["prod"]
    with pytest.raises(NotConfigured, match=why) as info:
        prod.database_url()
    reason = str(info.value)
    assert reason.startswith(f"invalid URL in {path} [environments.prod] url: ")
    assert config.environment_problems() == [reason]
    assert prod.display_url() == reason
    assert config.environments["dev"].database_url() == f"sqlite:///{tmp_path / 'dev.db'}"
    for text in (reason, repr(prod), repr(config)):
        assert "pw-in-here" not in text and "123456789" not in text


def test_an_out_of_range_port_in_the_variable_is_not_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(write(tmp_path, GOOD))
    monkeypatch.setenv("STAGING_DATABASE_URL", "postgresql://app:hunter2@db.example:65536/app")
    with pytest.raises(
        NotConfigured, match="STAGING_DATABASE_URL is not a usable database URL: its port"
    ):
        config.environments["staging"].database_url()
    # An unset or unusable variable may be set right on the worker's host: not a config problem.
    assert config.environment_problems() == []
    monkeypatch.setenv("STAGING_DATABASE_URL", "postgresql://app:hunter2@db.example:65535/app")
    assert config.environments["staging"].database_url().endswith("@db.example:65535/app")


def test_a_config_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.toml"
    path.write_bytes('[projects.blog]\ndescription = "café"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"dashboard\.toml: not UTF-8 text"):
        load_config(path)


def test_an_unusable_url_in_the_variable_is_not_configured_and_never_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = load_config(write(tmp_path, GOOD)).environments["staging"]
    for value, why in [
        ("postgresql://app:hunt@er2@db.example/app", "write an '@'"),
        ("postgresql://app:hunter2@db.example:54x/app", "is not a database URL"),
    ]:
        monkeypatch.setenv("STAGING_DATABASE_URL", value)
        with pytest.raises(NotConfigured, match=f"not configured: STAGING_DATABASE_URL .*{why}"):
            staging.database_url()
        assert "hunt" not in staging.display_url()


def test_mask_url_hides_passwords_in_the_query_too() -> None:
    masked = mask_url("postgresql://u@h/db?password=s3cret&sslpassword=k3y&sslmode=require")
    assert masked == "postgresql://u@h/db?password=***&sslmode=require&sslpassword=***"
    assert mask_url("postgresql://u:a@b@h/db") == (
        "<not a usable database URL: write an '@' in a user name or password as %40>"
    )


def test_alembic_ini_gives_the_script_location(tmp_path: Path) -> None:
    (tmp_path / "proj" / "migrations").mkdir(parents=True)
    (tmp_path / "proj" / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/migrations\n"
    )
    path = tmp_path / "dashboard.toml"
    path.write_text('[projects.p]\nalembic_ini = "proj/alembic.ini"\n')
    project = load_config(path).projects["p"]
    assert project.script_location == tmp_path / "proj" / "migrations"
    assert project.alembic_ini == tmp_path / "proj" / "alembic.ini"


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file does not exist"):
        load_config(tmp_path / "absent.toml")


def test_system_check_reports_a_broken_config_at_start_up(tmp_path: Path) -> None:
    path = write(tmp_path, '[environments.prod]\nproject = "nope"\nurl = "sqlite://"\n')
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "DASHBOARD_CONFIG": str(path),
            "DEBUG": "1",
            "DASHBOARD_VAR_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "dashboard.E001" in result.stderr
    assert (
        f"{path}: [environments.prod] project 'nope' is not defined in [projects]" in result.stderr
    )


def test_system_check_reports_each_bad_url_and_passes_the_good_ones(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[projects.blog]\nscript_location = "scripts"\n'
        '[environments.prod]\nproject = "blog"\nurl = "postgresql://u:s3cret@db:99999/app"\n'
        '[environments.dev]\nproject = "blog"\nurl = "sqlite:///dev.db"\n',
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "DASHBOARD_CONFIG": str(path),
            "DEBUG": "1",
            "DASHBOARD_VAR_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "dashboard.E003" in result.stderr and "dashboard.E001" not in result.stderr
    assert f"invalid URL in {path} [environments.prod] url: " in result.stderr
    assert "environments.dev" not in result.stderr
    assert "s3cret" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("written", "used"),
    [
        ("postgresql://u:p@h/db", "postgresql+psycopg2://u:p@h/db"),
        ("mysql://u:p@h/db", "mysql+pymysql://u:p@h/db"),
        ("mariadb://u:p@h/db", "mariadb+pymysql://u:p@h/db"),
        ("postgresql+psycopg2://u:p@h/db", "postgresql+psycopg2://u:p@h/db"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ],
)
def test_bare_urls_use_the_installed_drivers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: str, used: str
) -> None:
    monkeypatch.setenv("STAGING_DATABASE_URL", written)
    staging = load_config(write(tmp_path, GOOD)).environments["staging"]
    assert staging.database_url() == used


def test_a_urls_env_line_with_a_bad_name_is_reported_without_quoting_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dashboard.config import load_config

    path = tmp_path / "dashboard.toml"
    path.write_text(
        '[projects.blog]\nscript_location = "."\n\n'
        '[fleets.lines]\nproject = "blog"\nurls_env = "TENANT_URLS"\n',
        encoding="utf-8",
    )
    long_name = "x" * 70
    monkeypatch.setenv(
        "TENANT_URLS",
        "postgresql://admin:S3cretPW@db/x?sslmode=require\n"
        f"{long_name}=sqlite:///long.db\nok=sqlite:///ok.db",
    )
    config = load_config(path)
    problems = " ".join(config.environment_problems())
    assert "S3cretPW" not in problems and "line 1" in problems and "line 2" in problems
    assert [env.name for env in config.members_of("lines")] == ["lines/ok"]


def test_a_fleet_name_too_long_for_its_members_names_is_refused(tmp_path: Path) -> None:
    from dashboard.config import load_config

    path = tmp_path / "dashboard.toml"
    path.write_text(
        '[projects.blog]\nscript_location = "."\n\n'
        f'[fleets.{"f" * 40}]\nproject = "blog"\nurl_template = "sqlite:///{{name}}.db"\n'
        'names = ["a"]\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="longer than 39 characters"):
        load_config(path)
