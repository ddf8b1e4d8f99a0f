"""URLs: page names are kebab-case and match their templates."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from dashboard.views import actions, core, status
from dashboard.views import audit as audit_views
from dashboard.views import graph as graph_views
from dashboard.views.auth import SignInView

urlpatterns = [
    path("", core.overview, name="overview"),
    path("healthz", core.healthz, name="healthz"),
    *status.urlpatterns,
    *actions.urlpatterns,
    *audit_views.urlpatterns,
    *graph_views.urlpatterns,
    path("accounts/login/", SignInView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]
