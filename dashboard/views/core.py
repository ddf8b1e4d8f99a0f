"""Pages that belong to no one feature: the overview and the health check."""

from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

from dashboard.selectors import status as status_selectors
from dashboard.views import HtmxHttpRequest


@require_GET
@vary_on_headers("HX-Request")
def overview(request: HtmxHttpRequest) -> HttpResponse:
    """Show the matrix of projects and environments from their latest snapshots."""
    template = "overview.html#matrix" if request.htmx else "overview.html"
    return render(request, template, {"matrix": status_selectors.status_matrix()})


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
