"""The rollout API: a rollout's status, waves, members and counts by state as JSON."""

from django.http import HttpResponse, JsonResponse
from django.urls import path

from dashboard import api
from dashboard.selectors import rollouts as rollout_selectors
from dashboard.views import HtmxHttpRequest


@api.api_view
def api_rollouts(request: HtmxHttpRequest) -> HttpResponse:
    """List rollouts newest first (?fleet= for one fleet's), each with its counts by state."""
    rows = rollout_selectors.rollout_rows(fleet=request.GET.get("fleet") or None)
    return JsonResponse(rows, safe=False)


@api.api_view
def api_rollout(request: HtmxHttpRequest, rollout_id: str) -> HttpResponse:
    """Return one rollout as JSON (?sql=1 adds each group's offline SQL)."""
    # Taken as text so that a malformed id is answered in JSON too, not by the HTML 404 page.
    summary = (
        rollout_selectors.rollout_summary(
            rollout_id=int(rollout_id), with_sql=request.GET.get("sql") == "1"
        )
        if rollout_id.isascii() and rollout_id.isdigit() and len(rollout_id) <= 18
        else None
    )
    if summary is None:
        return api.error(404, f"no rollout #{rollout_id}")
    return JsonResponse(summary)


urlpatterns = [
    path("api/rollouts", api_rollouts, name="api-rollouts"),
    path("api/rollouts/<str:rollout_id>", api_rollout, name="api-rollout"),
]
