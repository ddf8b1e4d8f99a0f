"""The environment page's schema section: its polling region and the "Check schema" button."""

from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers

from dashboard.config import ConfigError
from dashboard.selectors import drift as drift_selectors
from dashboard.services import drift as drift_services
from dashboard.views import HtmxHttpRequest


@require_GET
@vary_on_headers("HX-Request")
def environment_schema(request: HtmxHttpRequest, name: str) -> HttpResponse:
    """Return the schema section (htmx polls it while a check is pending); else the page."""
    if not request.htmx:
        return redirect(reverse("environment", args=[name]) + "#schema")
    return _section(request, name)


@require_POST
def environment_schema_check(request: HtmxHttpRequest, name: str) -> HttpResponse:
    """Ask a worker to check the environment's schema now; the section polls for the result."""
    if not drift_selectors.may_check_schema(request.user):
        context = {
            "message": "Your role cannot ask for a schema check: operators and above can.",
            "back_url": reverse("environment", args=[name]),
            "back_label": f"Back to {name}",
        }
        return render(request, "actions/refused.html", context, status=403)
    try:
        drift_services.schema_check_request(environment=name, user=request.user, request=request)
    except drift_services.UnknownEnvironment as exc:
        raise Http404(str(exc)) from exc
    if not request.htmx:
        return redirect(reverse("environment", args=[name]) + "#schema")
    return _section(request, name)


def _section(request: HtmxHttpRequest, name: str) -> HttpResponse:
    try:
        panel = drift_selectors.schema_panel(environment=name, user=request.user)
    except ConfigError as exc:
        return HttpResponse(f"The config cannot be read: {exc}", status=503)
    if panel is None:
        raise Http404(f"no environment named {name!r}")
    return render(request, "environment.html#schema-poll", {"name": name, "schema": panel})


urlpatterns = [
    path("environments/<str:name>/schema", environment_schema, name="environment-schema"),
    path(
        "environments/<str:name>/schema/check",
        environment_schema_check,
        name="environment-schema-check",
    ),
]
