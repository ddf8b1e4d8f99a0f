"""The notifications page: every delivery and its attempts, for admins."""

from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import render
from django.urls import path
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

from dashboard import roles
from dashboard.selectors import notifications as notification_selectors
from dashboard.views import HtmxHttpRequest


@vary_on_headers("HX-Request")
@require_GET
def notifications(request: HtmxHttpRequest) -> HttpResponse:
    """List deliveries newest first: notifier, event, status, attempts, answer, last error."""
    if roles.role_of(request.user) != roles.ADMIN:
        raise PermissionDenied("the notifications page is for admins")
    listing = notification_selectors.delivery_list(
        page=request.GET.get("page"), status=request.GET.get("status", "")
    )
    template = "notifications.html#deliveries" if request.htmx else "notifications.html"
    return render(request, template, {"listing": listing})


urlpatterns = [
    path("notifications/", notifications, name="notifications"),
]
