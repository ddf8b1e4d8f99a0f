"""Login, roles, the overview, the health check and production settings."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client

from dashboard.roles import role_of

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.django_db


def test_pages_need_a_signed_in_user(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_healthz_answers_anonymously(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["database"] == {"readable": True, "writable": True}


def test_adduser_creates_and_then_changes_the_role(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHBOARD_PASSWORD", "a-long-password-1")
    call_command("adduser", "olga", role="operator")
    user = get_user_model().objects.get(username="olga")
    assert role_of(user) == "operator"
    assert user.check_password("a-long-password-1")
    assert not user.is_staff
    call_command("adduser", "olga", role="admin")
    user.refresh_from_db()
    assert role_of(user) == "admin"
    assert user.is_staff and user.is_superuser
    assert user.check_password("a-long-password-1")


def test_sign_in_and_out_through_the_login_page(client: Client) -> None:
    call_command("adduser", "vera", role="viewer", password="correct-horse-9")
    bad = client.post("/accounts/login/", {"username": "vera", "password": "wrong"})
    assert bad.status_code == 200
    assert b"Please enter a correct username and password" in bad.content
    good = client.post("/accounts/login/", {"username": "vera", "password": "correct-horse-9"})
    assert good.status_code == 302
    page = client.get("/")
    assert page.status_code == 200
    assert b"vera" in page.content and b"viewer" in page.content
    assert client.get("/accounts/logout/").status_code == 405  # logout is POST only
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/").status_code == 302


def test_overview_lists_configured_environments(client: Client) -> None:
    call_command("adduser", "lead", role="viewer", password="correct-horse-9")
    client.login(username="lead", password="correct-horse-9")
    content = client.get("/").content.decode()
    for name in ("dev", "qa", "staging", "prod"):
        assert f'id="env-{name}"' in content


def test_admin_site_is_for_the_admin_role_only(client: Client) -> None:
    call_command("adduser", "op", role="operator", password="correct-horse-9")
    call_command("adduser", "root", role="admin", password="correct-horse-9")
    client.login(username="op", password="correct-horse-9")
    assert client.get("/admin/").status_code == 302
    client.login(username="root", password="correct-horse-9")
    assert client.get("/admin/").status_code == 200


def test_pages_send_a_strict_content_security_policy(client: Client) -> None:
    response = client.get("/accounts/login/")
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "<script>" not in response.content.decode()


def test_check_deploy_is_clean_with_production_variables(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "SECRET_KEY": "x" * 64 + "-production-like-secret-key-0123456789",
        "ALLOWED_HOSTS": "dashboard.example.com",
        "DEBUG": "0",
        "SECURE_SSL_REDIRECT": "1",
        "SECURE_HSTS_SECONDS": "31536000",
        "SECURE_HSTS_PRELOAD": "1",
        "DASHBOARD_VAR_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_settings_refuse_to_start_without_a_secret_key(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "DASHBOARD_VAR_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_adduser_recreates_a_missing_role_group() -> None:
    from django.contrib.auth.models import Group

    Group.objects.filter(name="approver").delete()
    call_command("adduser", "amy", role="approver", password="correct-horse-9")
    assert role_of(get_user_model().objects.get(username="amy")) == "approver"


def test_adduser_keeps_the_password_rules_and_the_names_sign_in_uses() -> None:
    with pytest.raises(CommandError, match="password refused: This password is too short"):
        call_command("adduser", "weak", role="admin", password="a")
    assert not get_user_model().objects.filter(username="weak").exists()
    call_command("adduser", "  ann ", role="viewer", password="a-long-password-1")
    assert get_user_model().objects.filter(username="ann").exists()
