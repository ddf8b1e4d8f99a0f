"""Create or update the provider's client and users (with exactly their groups) from JSON."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand
from oauth2_provider.models import Application


class Command(BaseCommand):
    help = "Read a JSON spec: client_id, client_secret, redirect_uris, users {name: groups}."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("spec")

    def handle(self, *args: Any, **options: Any) -> None:
        with open(options["spec"], encoding="utf-8") as handle:
            spec = json.load(handle)
        app = Application.objects.filter(client_id=spec["client_id"]).first()
        if app is None:
            app = Application(client_id=spec["client_id"])
        app.name = "dashboard"
        app.client_secret = spec["client_secret"]
        app.client_type = Application.CLIENT_CONFIDENTIAL
        app.authorization_grant_type = Application.GRANT_AUTHORIZATION_CODE
        app.algorithm = Application.RS256_ALGORITHM
        app.redirect_uris = " ".join(spec["redirect_uris"])
        app.post_logout_redirect_uris = " ".join(spec["post_logout_redirect_uris"])
        app.skip_authorization = True
        app.save()
        for name, person in spec["users"].items():
            user, _ = User.objects.get_or_create(username=name)
            user.email = f"{name}@example.test"
            if not user.check_password(person["password"]):
                # Only when it changes: a new hash would end the user's sessions here.
                user.set_password(person["password"])
            user.save()
            user.groups.set(Group.objects.get_or_create(name=g)[0] for g in person["groups"])
