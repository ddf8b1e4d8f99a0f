"""URLs: page names are kebab-case and match their templates."""

from django.contrib import admin
from django.contrib.auth.decorators import login_not_required
from django.templatetags.static import static
from django.urls import path
from django.utils.functional import lazy
from django.views.decorators.http import require_GET
from django.views.generic import RedirectView

from dashboard.sso import urls as sso_urls
from dashboard.sso.views import SignOutView
from dashboard.views import action_api, actions, core, rollout_api, status
from dashboard.views import audit as audit_views
from dashboard.views import drift as drift_views
from dashboard.views import fleets as fleet_views
from dashboard.views import graph as graph_views
from dashboard.views import metrics as metrics_views
from dashboard.views import notifications as notification_views
from dashboard.views import rollouts as rollout_views
from dashboard.views.auth import SignInView

urlpatterns = [
    path("", core.overview, name="overview"),
    path("healthz", core.healthz, name="healthz"),
    path("readyz", core.readyz, name="readyz"),
    *status.urlpatterns,
    *drift_views.urlpatterns,
    *fleet_views.urlpatterns,
    *actions.urlpatterns,
    *rollout_views.urlpatterns,
    *rollout_api.urlpatterns,
    *action_api.urlpatterns,
    *audit_views.urlpatterns,
    *graph_views.urlpatterns,
    *notification_views.urlpatterns,
    *metrics_views.urlpatterns,
    path("accounts/login/", SignInView.as_view(), name="login"),
    path("accounts/logout/", SignOutView.as_view(), name="logout"),
    *sso_urls.urlpatterns,
    path("admin/", admin.site.urls),
    # Browsers ask for it on every site; the static URL may carry a content hash, so not 301.
    path(
        "favicon.ico",
        login_not_required(
            require_GET(RedirectView.as_view(url=lazy(static, str)("dashboard/favicon.svg")))
        ),
        name="favicon",
    ),
]
