"""The fleet page, its refresh and the fleet API: members counted and listed from snapshots."""

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers
from django_htmx.http import reswap, retarget

from dashboard import api
from dashboard.config import ConfigError
from dashboard.selectors import fleets as fleet_selectors
from dashboard.services import status as status_services
from dashboard.views import HtmxHttpRequest


@require_GET
@vary_on_headers("HX-Request")
def fleet(request: HtmxHttpRequest, name: str) -> HttpResponse:
    """Show a fleet's members, filtered, sorted and a page at a time, from their snapshots."""
    filters = fleet_selectors.FleetFilters.from_params(request.GET)
    try:
        page = fleet_selectors.fleet_page(name=name, filters=filters, user=request.user)
    except ConfigError as exc:
        context = {"name": name, "config_error": str(exc)}
        return render(request, "fleet.html", context, status=503)
    if page is None:
        raise Http404(f"no fleet named {name!r}")
    template = "fleet.html#members" if request.htmx else "fleet.html"
    return render(request, template, {"name": name, "page": page})


@require_POST
def fleet_refresh(request: HtmxHttpRequest, name: str) -> HttpResponse:
    """Read every member of a fleet now; answer htmx with the refreshed members table."""
    if not fleet_selectors.may_refresh_fleet(request.user):
        raise PermissionDenied("reading a whole fleet is for operators, approvers and admins")
    filters = fleet_selectors.FleetFilters.from_params(request.POST)
    try:
        members = fleet_selectors.member_names(name=name)
        if members is None:
            raise Http404(f"no fleet named {name!r}")
        status_services.status_refresh(environments=members)
        page = fleet_selectors.fleet_page(name=name, filters=filters, user=request.user)
    except ConfigError as exc:
        return _problem(request, name, f"The config cannot be read: {exc}")
    if not request.htmx:
        query = filters.query()
        return redirect(reverse("fleet", args=[name]) + (f"?{query}" if query else ""))
    return render(request, "fleet.html#members", {"name": name, "page": page})


@api.api_view
def api_fleet(request: HtmxHttpRequest, name: str) -> HttpResponse:
    """Return a fleet's counts by state and its members (?state=, ?revision=, ?q=) as JSON."""
    filters = fleet_selectors.FleetFilters.from_params(request.GET)
    try:
        item = fleet_selectors.fleet_item(name=name, filters=filters)
    except ConfigError as exc:
        return api.error(503, f"the config cannot be read: {exc}")
    if item is None:
        return api.error(404, f"no fleet named {name!r}")
    return JsonResponse(item)


def _problem(request: HtmxHttpRequest, name: str, message: str) -> HttpResponse:
    """Say why a refresh could not run: in the page's problem slot for htmx, else on the page."""
    if not request.htmx:
        return render(request, "fleet.html", {"name": name, "config_error": message}, status=503)
    response = render(request, "fleet.html#refresh-problem", {"problem": message})
    return reswap(retarget(response, "#refresh-problem"), "outerHTML")


urlpatterns = [
    path("fleets/<str:name>", fleet, name="fleet"),
    path("fleets/<str:name>/refresh", fleet_refresh, name="fleet-refresh"),
    path("api/fleets/<str:name>", api_fleet, name="api-fleet"),
]
