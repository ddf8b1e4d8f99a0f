"""Pages that belong to no one feature: the overview and the health and readiness checks."""

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

from dashboard.selectors import heads_guard, history_checks
from dashboard.selectors import status as status_selectors
from dashboard.selectors import workers as worker_selectors
from dashboard.services import health
from dashboard.views import HtmxHttpRequest


@require_GET
@vary_on_headers("HX-Request")
def overview(request: HtmxHttpRequest) -> HttpResponse:
    """Show the matrix of projects and environments from their latest snapshots."""
    # The matrix polls itself; its answer carries the worker banner out of band.
    template = "overview.html#poll" if request.htmx else "overview.html"
    matrix = status_selectors.status_matrix()
    # A history last read with one head has no fork to look for; the others are read again.
    single = [project.name for project in matrix.projects if len(project.heads) == 1]
    context = {
        "matrix": matrix,
        "workers": worker_selectors.worker_liveness(),
        # Outside the cached matrix: banners of histories Alembic would refuse or cannot pick.
        "heads_banners": heads_guard.heads_banners(skip=single),
        "load_failures": history_checks.load_failures(),
    }
    return render(request, template, context)


@login_not_required
@never_cache
@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Answer liveness probes: 200 while the dashboard's database can be read, with the details."""
    report = health.health_check()
    if not report.database.readable:
        return JsonResponse({**report.as_json(), "status": "error"}, status=503)
    return JsonResponse(report.as_json())


@login_not_required
@never_cache
@require_GET
def readyz(request: HttpRequest) -> HttpResponse:
    """Answer readiness probes: 503 unless the database takes writes and a worker is alive."""
    report = health.health_check()
    ready = not report.problems
    return JsonResponse({"ready": ready, **report.as_json()}, status=200 if ready else 503)
