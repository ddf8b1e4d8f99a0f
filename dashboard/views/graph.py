"""The revision graph page, the revision panel and the graph API."""

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import path
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

from dashboard import api
from dashboard.config import ConfigError
from dashboard.scripts import ScriptLocationError
from dashboard.selectors import drift as drift_selectors
from dashboard.selectors import graph as graph_selectors
from dashboard.selectors import heads_guard, history_checks
from dashboard.selectors.graph import GraphNotFound
from dashboard.views import HtmxHttpRequest

View = Callable[..., HttpResponse]


def _failures_as_pages(view: View) -> View:
    """Answer an unknown project or revision with a 404 page, unreadable files with a 503."""

    @wraps(view)
    def wrapper(request: HtmxHttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except GraphNotFound as exc:
            return render(request, "graph.html", {"failure": str(exc)}, status=404)
        except (ConfigError, ScriptLocationError) as exc:
            failure = f"The revision history cannot be read: {exc}"
            return render(request, "graph.html", {"failure": failure}, status=503)

    return wrapper


def _number(request: HtmxHttpRequest, name: str) -> int | None:
    value = request.GET.get(name, "")
    # Nine digits is beyond any history; more would only feed int() a denial of service.
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 9 else None


def _start(request: HtmxHttpRequest) -> int | None:
    return _number(request, "start")


@require_GET
@_failures_as_pages
def graph_index(request: HtmxHttpRequest) -> HttpResponse:
    """Send the Graph link to the first project's graph."""
    url = graph_selectors.first_project_url()
    if url is None:
        failure = "No projects are configured: add them to the file named by DASHBOARD_CONFIG."
        return render(request, "graph.html", {"failure": failure}, status=404)
    return redirect(url)


@require_GET
@vary_on_headers("HX-Request")
@_failures_as_pages
def graph(request: HtmxHttpRequest, name: str) -> HttpResponse:
    """Show a project's revision graph, a window of rows at a time; htmx asks for more.

    `?around=<rev>` opens the rows around a revision; `?open=<n>` shows the first n rows
    from `start` one by one: a collapsed run expanded (htmx gets just those rows).
    """
    open_rows = _number(request, "open") or 0
    if request.htmx and not request.htmx.history_restore_request:
        if open_rows:
            window = graph_selectors.graph_expanded(
                project=name, start=_start(request) or 0, count=open_rows
            )
        else:
            window = graph_selectors.graph_window(project=name, start=_start(request) or 0)
        return render(request, "graph.html#window", {"window": window})
    page = graph_selectors.graph_page(
        project=name,
        start=_start(request),
        rev=request.GET.get("rev", ""),
        query=request.GET.get("q", ""),
        around=request.GET.get("around", ""),
        open_rows=open_rows,
    )
    models = drift_selectors.project_models_note(
        project=name, heads=[link.revision for link in page.heads]
    )
    context = {
        "page": page,
        "window": page.window,
        "panel": page.panel,
        "models": models,
        "heads_banner": heads_guard.heads_banner(project=name, history=page.history),
        "load_failure": history_checks.load_failure(project=name),
    }
    return render(request, "graph.html", context)


@require_GET
@vary_on_headers("HX-Request")
@_failures_as_pages
def revision(request: HtmxHttpRequest, name: str, rev: str) -> HttpResponse:
    """Show one revision: the side panel for htmx, a page of its own without JavaScript."""
    panel = graph_selectors.revision_panel(project=name, revision=rev)
    template = "graph.html#panel" if request.htmx else "revision.html"
    return render(request, template, {"panel": panel})


@api.api_view
def api_graph(request: HtmxHttpRequest, name: str) -> HttpResponse:
    """Return a project's heads, bases, revisions and problems as JSON."""
    try:
        document = graph_selectors.graph_json(project=name)
    except GraphNotFound as exc:
        return api.error(404, str(exc))
    except (ConfigError, ScriptLocationError) as exc:
        return api.error(503, f"the revision history cannot be read: {exc}")
    document["heads_guard"] = heads_guard.heads_guard_json(project=name)
    document["history_check"] = history_checks.history_check_json(project=name)
    return JsonResponse(document)


urlpatterns = [
    path("graph", graph_index, name="graph-index"),
    path("projects/<str:name>/graph", graph, name="graph"),
    # <path:...>: Alembic allows '/' in revision ids.
    path("projects/<str:name>/revisions/<path:rev>", revision, name="revision"),
    path("api/projects/<str:name>/graph", api_graph, name="api-graph"),
]
