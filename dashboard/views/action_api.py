"""The action API: one action as JSON, as `action show --json` prints it, with its forecast."""

from django.http import HttpResponse, JsonResponse
from django.urls import path

from dashboard import api
from dashboard.management.commands.action import action_document
from dashboard.models import Action
from dashboard.views import HtmxHttpRequest


@api.api_view
def api_action(request: HtmxHttpRequest, action_id: str) -> HttpResponse:
    """Return one action as JSON: its plan, state, forecast_s and per revision the times seen."""
    # Taken as text so that a malformed id is answered in JSON too, not by the HTML 404 page.
    found = (
        Action.objects.filter(pk=int(action_id)).first()
        if action_id.isascii() and action_id.isdigit() and len(action_id) <= 18
        else None
    )
    if found is None:
        return api.error(404, f"no action #{action_id}")
    return JsonResponse(action_document(found))


urlpatterns = [
    path("api/actions/<str:action_id>", api_action, name="api-action"),
]
