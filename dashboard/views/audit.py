"""The audit page and its streamed exports."""

from django.http import HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.urls import path
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

from dashboard.forms import AuditFilterForm
from dashboard.selectors import audit as audit_selectors
from dashboard.views import HtmxHttpRequest


def _filters(request: HtmxHttpRequest) -> tuple[AuditFilterForm, audit_selectors.AuditFilters]:
    """Validate the filters; an invalid one is reported and left out, never a 500."""
    form = AuditFilterForm(request.GET)
    form.is_valid()
    values = {k: v for k, v in getattr(form, "cleaned_data", {}).items() if v}
    return form, audit_selectors.AuditFilters(**values)


@vary_on_headers("HX-Request")
@require_GET
def audit(request: HtmxHttpRequest) -> HttpResponse:
    """Show the trail newest first, filtered by environment, user, verb and date."""
    verify = "verify" in request.GET
    if request.htmx and verify:
        # The chain is walked after the page shows: it reads every event.
        return render(request, "audit.html#chain", {"chain": audit_selectors.chain()})
    form, filters = _filters(request)
    page = audit_selectors.audit_page(filters=filters, page=request.GET.get("page"), verify=verify)
    template = "audit.html#events" if request.htmx else "audit.html"
    return render(request, template, {"page": page, "form": form, "chain": page.chain})


@require_GET
def audit_export(request: HtmxHttpRequest) -> HttpResponseBase:
    """Stream the filtered trail as CSV or JSON Lines."""
    fmt = request.GET.get("format", "")
    if fmt not in audit_selectors.EXPORT_FORMATS:
        return HttpResponseBadRequest("format must be csv or jsonl")
    _form, filters = _filters(request)
    response = StreamingHttpResponse(
        audit_selectors.export_lines(filters=filters, fmt=fmt),
        content_type=audit_selectors.EXPORT_FORMATS[fmt][0],
    )
    filename = audit_selectors.export_filename(fmt=fmt)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


urlpatterns = [
    path("audit/", audit, name="audit"),
    path("audit/export", audit_export, name="audit-export"),
]
