"""The environment page's schema section: its polling region and the "Check schema" button."""

from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers
from django_htmx.http import HTMX_STOP_POLLING, reswap, retarget

from dashboard.config import ConfigError
from dashboard.selectors import drift as drift_selectors
from dashboard.services import drift as drift_services
from dashboard.views import HtmxHttpRequest


@require_GET
@vary_on_headers("HX-Request")
def environment_schema(request: HtmxHttpRequest, name: str) -> HttpResponse:
    """Return the schema section for htmx; else the page."""
    if not request.htmx:
        return redirect(reverse("environment", args=[name]) + "#schema")
    return _section(request, name)


@require_GET
@vary_on_headers("HX-Request")
def environment_schema_progress(request: HtmxHttpRequest, name: str) -> HttpResponse:
    """Answer a pending check's poll: a few bytes while it runs, then the whole section."""
    if not request.htmx:
        return redirect(reverse("environment", args=[name]) + "#schema")
    try:
        progress = drift_selectors.schema_progress(environment=name)
    except ConfigError as exc:
        return _stop(request, f"The config cannot be read: {exc}")
    if progress is None:
        return _stop(request, f"{name} is not in the config (any more): reload the page.")
    if progress.checking:
        return render(request, "environment.html#schema-progress", {"progress": progress})
    # Done: the answer replaces the section the poller sits in, not the poller alone.
    return reswap(retarget(_section(request, name), "#schema"), "outerHTML")


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
        return _stop(request, f"The config cannot be read: {exc}")
    if panel is None:
        return _stop(request, f"{name} is not in the config (any more): reload the page.")
    return render(request, "environment.html#schema-poll", {"name": name, "schema": panel})


def _stop(request: HtmxHttpRequest, message: str) -> HttpResponse:
    """Say why there is no section to show, and stop htmx polling for it (a 404 or 503 would
    leave the poller asking every 2 s)."""
    context = {"message": message}
    return render(request, "environment.html#schema-stopped", context, status=HTMX_STOP_POLLING)


urlpatterns = [
    path("environments/<env:name>/schema", environment_schema, name="environment-schema"),
    path(
        "environments/<env:name>/schema/progress",
        environment_schema_progress,
        name="environment-schema-progress",
    ),
    path(
        "environments/<env:name>/schema/check",
        environment_schema_check,
        name="environment-schema-check",
    ),
]
