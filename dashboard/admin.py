"""Django's admin site for the admin role: roles change only through `adduser`, which audits."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth import REDIRECT_FIELD_NAME, get_user_model
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.models import Group
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.urls import reverse


class DashboardUserAdmin(UserAdmin):  # type: ignore[type-arg]
    """Accounts with their role and privileges shown, not edited: edits here leave no audit."""

    readonly_fields = ("groups", "user_permissions", "is_staff", "is_superuser", "last_login")


@login_not_required
def sign_in_through_the_dashboard(request: HttpRequest, extra_context: Any = None) -> HttpResponse:
    """Send the admin site's own sign-in to the dashboard's, which throttles and audits."""
    if request.user.is_authenticated:  # signed in, but not in the admin role
        raise PermissionDenied("the admin site is for the admin role")
    target = request.GET.get(REDIRECT_FIELD_NAME) or reverse("admin:index")
    return redirect_to_login(target, reverse("login"))


admin.site.unregister(get_user_model())
admin.site.register(get_user_model(), DashboardUserAdmin)
# Roles are these groups by name: renaming one would change everybody's role unaudited.
admin.site.unregister(Group)
admin.site.login = sign_in_through_the_dashboard  # type: ignore[method-assign]
