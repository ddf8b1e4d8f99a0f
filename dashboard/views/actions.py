"""Action pages: request an upgrade or rollback, review and decide it, watch it run."""

from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers

from dashboard.config import ConfigError
from dashboard.forms import ActionFilterForm, ActionRequestForm, ApprovalForm, RejectionForm
from dashboard.selectors import actions as action_selectors
from dashboard.selectors import drift as drift_selectors
from dashboard.selectors import forecasts as forecast_selectors
from dashboard.selectors import plan_marks as plan_marks_selectors
from dashboard.selectors import targets as target_selectors
from dashboard.selectors import windows as window_selectors
from dashboard.services import actions as action_services
from dashboard.views import HtmxHttpRequest


@vary_on_headers("HX-Request")
@require_GET
def action_list(request: HtmxHttpRequest) -> HttpResponse:
    """List actions: those awaiting the viewer's decision first, then the rest newest first."""
    form = ActionFilterForm(request.GET)
    filters = form.cleaned_data if form.is_valid() else {}
    listing = action_selectors.action_list(
        user=request.user,
        environment=filters.get("environment", ""),
        status=filters.get("status", ""),
        page=request.GET.get("page"),
    )
    template = "actions/list.html#actions-table" if request.htmx else "actions/list.html"
    return render(request, template, {"listing": listing})


@vary_on_headers("HX-Request")
@require_http_methods(["GET", "POST"])
def action_request(request: HtmxHttpRequest, name: str) -> HttpResponse:
    """Show the request form for one environment, and request the action it describes."""
    direction = request.POST.get("direction") or request.GET.get("direction", "")
    try:
        page = target_selectors.request_page(
            user=request.user, environment=name, direction=direction
        )
    except ConfigError as exc:
        context = {"name": name, "config_error": str(exc)}
        return render(request, "environment.html", context, status=503)
    if page is None:
        raise Http404("no such environment")
    initial = {"direction": page.direction, "target": page.targets[0].value if page.targets else ""}
    form = ActionRequestForm(
        request.POST or None,
        initial=initial,
        targets=page.target_choices,
        zone=window_selectors.run_at_zone(name),
    )
    status = 200 if page.may_request else 403
    # While the environment cannot be read the page offers no form: a stale one is not sent on.
    if request.method == "POST" and not page.blocked and form.is_valid():
        try:
            action = action_services.action_request(
                user=request.user, environment=name, request=request, **form.cleaned_data
            )
        except action_services.ActionRefused as exc:
            form.add_error(None, str(exc))
            status = 403 if isinstance(exc, action_services.NotAllowed) else 200
        else:
            return redirect("action-detail", pk=action.pk)
    template = "actions/request.html#request-swap" if request.htmx else "actions/request.html"
    # What the schema says of the target picked, once one was sent (a stamp's match).
    target = (form["target"].value() or "") if form.is_bound else ""
    notes = drift_selectors.request_notes(
        environment=name, direction=page.direction, target=str(target)
    )
    shown = {
        "page": page,
        "form": form,
        "schema_notes": notes,
        "plan_marks": plan_marks_selectors.request_marks(page),
        "forecast": forecast_selectors.request_forecast(page),
        "windows": window_selectors.environment_windows(name),
    }
    return render(request, template, shown, status=status)


@vary_on_headers("HX-Request")
@require_GET
def action_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Show an action: plan, SQL, warnings, approvals, progress and result."""
    page = action_selectors.action_page(user=request.user, action_id=pk)
    if page is None:
        raise Http404("no such action")
    # htmx polls the review region while the worker prepares the SQL.
    template = "actions/action.html#review" if request.htmx else "actions/action.html"
    notes = None if request.htmx else drift_selectors.action_notes(action=page.action)
    context = {
        "page": page,
        "review": page.review,
        "progress": page.progress,
        "schema_notes": notes,
        "plan_marks": None if request.htmx else plan_marks_selectors.action_marks(page.action),
        "forecast": None if request.htmx else forecast_selectors.action_forecast(page.action),
        "schedule": window_selectors.action_schedule(page.action),
    }
    return render(request, template, context)


@require_GET
def action_progress(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Return the live region of the action page: status, i of n, log tail, result."""
    progress = action_selectors.action_progress(user=request.user, action_id=pk)
    if progress is None:
        raise Http404("no such action")
    return render(request, "actions/action.html#progress", {"progress": progress})


@require_POST
def action_approve(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Approve the plan the approver saw."""
    form = ApprovalForm(request.POST)
    if not form.is_valid():
        return _invalid(request, pk, form)
    try:
        action_services.action_approve(
            user=request.user, action_id=pk, request=request, **form.cleaned_data
        )
    except action_services.ActionRefused as exc:
        return _refused(request, pk, exc)
    messages.success(request, "Approved.")
    return redirect("action-detail", pk=pk)


@require_POST
def action_reject(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Reject an action with a reason."""
    form = RejectionForm(request.POST)
    if not form.is_valid():
        return _invalid(request, pk, form)
    try:
        action_services.action_reject(
            user=request.user, action_id=pk, request=request, **form.cleaned_data
        )
    except action_services.ActionRefused as exc:
        return _refused(request, pk, exc)
    messages.success(request, "Rejected.")
    return redirect("action-detail", pk=pk)


@require_POST
def action_cancel(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Cancel an action that has not finished."""
    try:
        action = action_services.action_cancel(user=request.user, action_id=pk, request=request)
    except action_services.ActionRefused as exc:
        return _refused(request, pk, exc)
    if action.is_finished:
        messages.success(request, "Cancelled.")
    else:
        messages.success(request, "Asked the worker to stop it; the progress below shows when.")
    return redirect("action-detail", pk=pk)


def _refused(request: HtmxHttpRequest, pk: int, exc: Exception) -> HttpResponse:
    """Answer a refusal: by role, a 403 page; any other, a message on the action page."""
    if isinstance(exc, action_services.ActionNotFound):
        raise Http404(str(exc))
    if isinstance(exc, action_services.NotAllowed | action_services.SelfApproval):
        context = {"message": str(exc), "action_url": reverse("action-detail", args=[pk])}
        return render(request, "actions/refused.html", context, status=403)
    messages.error(request, str(exc))
    return redirect("action-detail", pk=pk)


def _invalid(request: HtmxHttpRequest, pk: int, form: ApprovalForm | RejectionForm) -> HttpResponse:
    """Say what the decision form lacked, on the action page."""
    for field, errors in form.errors.items():
        for error in errors:
            messages.error(request, f"{field.replace('_', ' ').capitalize()}: {error}")
    return redirect("action-detail", pk=pk)


urlpatterns = [
    path("actions/", action_list, name="action-list"),
    path("actions/<int:pk>/", action_detail, name="action-detail"),
    path("actions/<int:pk>/progress", action_progress, name="action-progress"),
    path("actions/<int:pk>/approve", action_approve, name="action-approve"),
    path("actions/<int:pk>/reject", action_reject, name="action-reject"),
    path("actions/<int:pk>/cancel", action_cancel, name="action-cancel"),
    path("environments/<env:name>/request", action_request, name="action-request"),
]
