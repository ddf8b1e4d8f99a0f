"""Environment status pages, the refresh endpoints and the status API."""

from django.contrib import messages
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers
from django_htmx.http import reswap, retarget

from dashboard import api
from dashboard.config import ConfigError
from dashboard.selectors import drift as drift_selectors
from dashboard.selectors import status as status_selectors
from dashboard.selectors import timeline as timeline_selectors
from dashboard.services import status as status_services
from dashboard.views import HtmxHttpRequest


@require_GET
@vary_on_headers("HX-Request")
def environment(request: HtmxHttpRequest, name: str) -> HttpResponse:
    """Show one environment: heads, state, pending revisions, history and the last error."""
    try:
        # htmx refreshes the status card only; the whole page reads its checks once, for both.
        schema = (
            None
            if request.htmx
            else drift_selectors.schema_panel(environment=name, user=request.user)
        )
        badge = schema.badge if schema is not None else None
        detail = status_selectors.environment_detail(name=name, schema=badge)
    except ConfigError as exc:
        context = {"name": name, "config_error": str(exc)}
        return render(request, "environment.html", context, status=503)
    if detail is None:
        raise Http404(f"no environment named {name!r}")
    if request.htmx:
        return render(request, "environment.html#status", {"name": name, "detail": detail})
    timeline = timeline_selectors.environment_timeline(name)
    shown = {"name": name, "detail": detail, "schema": schema, "timeline": timeline}
    return render(request, "environment.html", shown)


@require_POST
def environment_refresh(request: HtmxHttpRequest, name: str) -> HttpResponse:
    """Read one environment now; answer htmx with its refreshed overview row or status block."""
    try:
        status_services.status_refresh(environments=[name])
    except status_services.UnknownEnvironment as exc:
        raise Http404(str(exc)) from exc
    except ConfigError as exc:
        return _problem(request, f"The config cannot be read: {exc}", "environment", name=name)
    if not request.htmx:
        return redirect("environment", name=name)
    if request.htmx.target == f"env-{name}":
        cell = status_selectors.environment_cell(name=name)
        return render(request, "overview.html#env-row", {"env": cell})
    detail = status_selectors.environment_detail(name=name)
    return render(request, "environment.html#status", {"name": name, "detail": detail})


@require_POST
def overview_refresh(request: HtmxHttpRequest) -> HttpResponse:
    """Read every environment now; answer htmx with the refreshed matrix."""
    try:
        status_services.status_refresh()
    except ConfigError as exc:
        return _problem(request, f"The config cannot be read: {exc}", "overview")
    if not request.htmx:
        return redirect("overview")
    return render(request, "overview.html#matrix", {"matrix": status_selectors.status_matrix()})


@api.api_view
def api_environments(request: HtmxHttpRequest) -> HttpResponse:
    """List every environment's latest snapshot as JSON."""
    try:
        items = status_selectors.environment_items()
    except ConfigError as exc:
        return api.error(503, f"the config cannot be read: {exc}")
    return JsonResponse(items, safe=False)


@api.api_view
def api_environment(request: HtmxHttpRequest, name: str) -> HttpResponse:
    """Return one environment's latest snapshot as JSON."""
    try:
        item = status_selectors.environment_item_named(name=name)
    except ConfigError as exc:
        return api.error(503, f"the config cannot be read: {exc}")
    if item is None:
        return api.error(404, f"no environment named {name!r}")
    return JsonResponse(item)


def _problem(request: HtmxHttpRequest, message: str, page: str, **kwargs: str) -> HttpResponse:
    """Say why a refresh could not run: in the page's problem slot for htmx, else as a message."""
    if not request.htmx:
        messages.error(request, message)
        return redirect(reverse(page, kwargs=kwargs))
    response = render(request, "overview.html#refresh-problem", {"problem": message})
    return reswap(retarget(response, "#refresh-problem"), "outerHTML")


urlpatterns = [
    path("refresh", overview_refresh, name="overview-refresh"),
    path("environments/<env:name>", environment, name="environment"),
    path("environments/<env:name>/refresh", environment_refresh, name="environment-refresh"),
    path("api/environments", api_environments, name="api-environments"),
    path("api/environments/<env:name>", api_environment, name="api-environment"),
]
