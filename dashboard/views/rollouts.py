"""Rollout pages: request one for a fleet, review and decide it, watch and steer its waves."""

from collections.abc import Callable

from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers

from dashboard.config import ConfigError
from dashboard.forms import RolloutApprovalForm, RolloutRejectionForm, RolloutRequestForm
from dashboard.models import Rollout
from dashboard.selectors import rollout_pages
from dashboard.services import rollouts as rollout_services
from dashboard.services.actions.errors import ActionRefused, NotAllowed
from dashboard.views import HtmxHttpRequest


@vary_on_headers("HX-Request")
@require_GET
def rollout_list(request: HtmxHttpRequest) -> HttpResponse:
    """List rollouts newest first, with their members' counts by state."""
    listing = rollout_pages.rollout_list(page=request.GET.get("page"))
    template = "rollouts.html#rollouts-table" if request.htmx else "rollouts.html"
    return render(request, template, {"listing": listing})


@require_http_methods(["GET", "POST"])
def rollout_request(request: HtmxHttpRequest, name: str) -> HttpResponse:
    """Show the rollout form for a fleet, and request the rollout it describes."""
    try:
        page = rollout_pages.rollout_request_page(user=request.user, fleet=name)
    except ConfigError as exc:
        context = {"name": name, "config_error": str(exc)}
        return render(request, "rollout-request.html", context, status=503)
    if page is None:
        raise Http404(f"no fleet named {name!r}")
    form = RolloutRequestForm(request.POST or None)
    status = 200 if page.may_request else 403
    if request.method == "POST" and page.may_request and form.is_valid():
        try:
            # The worker renders each group's SQL: the page polls until it is shown.
            rollout = rollout_services.rollout_request(
                user=request.user, fleet=name, request=request, prepare=False, **form.cleaned_data
            )
        except ActionRefused as exc:
            form.add_error(None, str(exc))
            status = 403 if isinstance(exc, NotAllowed) else 200
        else:
            return redirect("rollout-detail", pk=rollout.pk)
    return render(request, "rollout-request.html", {"page": page, "form": form}, status=status)


@vary_on_headers("HX-Request")
@require_GET
def rollout_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Show a rollout: its groups and their SQL, the decision, the waves and their members."""
    if request.htmx:
        # htmx polls the review region while the worker prepares the SQL.
        review = rollout_pages.rollout_review(user=request.user, rollout_id=pk)
        if review is None:
            raise Http404("no such rollout")
        return render(request, "rollout.html#review", {"review": review})
    page = rollout_pages.rollout_page(user=request.user, rollout_id=pk)
    if page is None:
        raise Http404("no such rollout")
    context = {"page": page, "review": page.review, "live": page.live}
    return render(request, "rollout.html", context)


@require_GET
def rollout_live(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Return the live region of the rollout page: waves, counts, progress, failures, controls."""
    live = rollout_pages.rollout_live(user=request.user, rollout_id=pk)
    if live is None:
        raise Http404("no such rollout")
    return render(request, "rollout.html#live", {"live": live})


@require_POST
def rollout_approve(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Approve the rollout the approver saw (its hash travels in the form)."""
    form = RolloutApprovalForm(request.POST)
    if not form.is_valid():
        return _invalid(request, pk, form)
    return _steer(
        request,
        pk,
        lambda: rollout_services.rollout_approve(
            user=request.user, rollout_id=pk, request=request, **form.cleaned_data
        ),
        "Approved.",
    )


@require_POST
def rollout_reject(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Reject a rollout with a reason."""
    form = RolloutRejectionForm(request.POST)
    if not form.is_valid():
        return _invalid(request, pk, form)
    return _steer(
        request,
        pk,
        lambda: rollout_services.rollout_reject(
            user=request.user, rollout_id=pk, request=request, **form.cleaned_data
        ),
        "Rejected.",
    )


@require_POST
def rollout_pause(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Pause a running rollout: running members finish, no new one starts."""
    return _steer(
        request,
        pk,
        lambda: rollout_services.rollout_pause(user=request.user, rollout_id=pk, request=request),
        "Paused: members running now finish, no new one starts.",
    )


@require_POST
def rollout_resume(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Resume a paused rollout, skipping the members that failed so far."""
    return _steer(
        request,
        pk,
        lambda: rollout_services.rollout_resume(user=request.user, rollout_id=pk, request=request),
        "Resumed: the members that failed are skipped.",
    )


@require_POST
def rollout_cancel(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Cancel a rollout: members not started are cancelled, running ones finish."""
    return _steer(
        request,
        pk,
        lambda: rollout_services.rollout_cancel(user=request.user, rollout_id=pk, request=request),
        "Cancelled: members not started will not run; running ones finish.",
    )


def _steer(
    request: HtmxHttpRequest, pk: int, call: Callable[[], Rollout], done: str
) -> HttpResponse:
    """Run one decision or control; a refusal by role is a 403 page, any other a message."""
    try:
        call()
    except rollout_services.RolloutNotFound as exc:
        raise Http404(str(exc)) from exc
    except NotAllowed as exc:
        context = {
            "message": str(exc),
            "back_url": reverse("rollout-detail", args=[pk]),
            "back_label": "Back to the rollout",
        }
        return render(request, "actions/refused.html", context, status=403)
    except ActionRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, done)
    return redirect("rollout-detail", pk=pk)


def _invalid(
    request: HtmxHttpRequest, pk: int, form: RolloutApprovalForm | RolloutRejectionForm
) -> HttpResponse:
    """Say what the decision form lacked, on the rollout page."""
    for field, errors in form.errors.items():
        for error in errors:
            messages.error(request, f"{field.replace('_', ' ').capitalize()}: {error}")
    return redirect("rollout-detail", pk=pk)


urlpatterns = [
    path("rollouts/", rollout_list, name="rollout-list"),
    path("rollouts/<int:pk>", rollout_detail, name="rollout-detail"),
    path("rollouts/<int:pk>/live", rollout_live, name="rollout-live"),
    path("rollouts/<int:pk>/approve", rollout_approve, name="rollout-approve"),
    path("rollouts/<int:pk>/reject", rollout_reject, name="rollout-reject"),
    path("rollouts/<int:pk>/pause", rollout_pause, name="rollout-pause"),
    path("rollouts/<int:pk>/resume", rollout_resume, name="rollout-resume"),
    path("rollouts/<int:pk>/cancel", rollout_cancel, name="rollout-cancel"),
    path("fleets/<str:name>/rollout", rollout_request, name="rollout-request"),
]
