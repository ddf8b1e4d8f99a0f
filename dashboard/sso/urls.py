"""Single sign-on's URLs: reachable without a session, as signing in must be."""

from django.contrib.auth.decorators import login_not_required
from django.urls import path

from dashboard.sso.views import SSOCallbackView, SSOStartView

urlpatterns = [
    path("accounts/sso/start/", login_not_required(SSOStartView.as_view()), name="sso-start"),
    path(
        "accounts/sso/callback/",
        login_not_required(SSOCallbackView.as_view()),
        name="sso-callback",
    ),
]
