"""Pages that belong to no one feature: the overview and the health check."""

from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from dashboard.selectors import overview as overview_selectors


@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    """Show every project's environments."""
    return render(request, "overview.html", {"overview": overview_selectors.overview()})


@login_not_required
@never_cache
@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Answer load balancers: 200 when the dashboard's own database answers."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:  # any database failure means unhealthy; say so without details
        return JsonResponse({"status": "error"}, status=503)
    return JsonResponse({"status": "ok"})
