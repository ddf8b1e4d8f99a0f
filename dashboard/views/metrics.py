"""/metrics for Prometheus: an API token, a signed-in user with a role, or an allowed address."""

from __future__ import annotations

import ipaddress
import logging
from functools import lru_cache

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from prometheus_client.exposition import choose_encoder

from dashboard import audit, metrics, roles
from dashboard.services import tokens

logger = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@login_not_required
@csrf_exempt  # read-only, and a scraper carries no cookies
@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Return the metrics in the format the scraper asks for, to those allowed to read them."""
    if request.method not in ("GET", "HEAD"):
        return _plain(405, "metrics are read-only: use GET")
    try:
        refusal = _refusal(request)
    except DatabaseError:
        logger.exception("metrics: could not check the API token")
        return _plain(503, "the dashboard's database cannot be read now; try again")
    if refusal is not None:
        return refusal
    encoder, content_type = choose_encoder(request.META.get("HTTP_ACCEPT", ""))
    return HttpResponse(encoder(metrics.registry()), content_type=content_type)


def _refusal(request: HttpRequest) -> HttpResponse | None:
    """Return why this request may not read the metrics, or None when it may."""
    scheme, _, credentials = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() == "bearer":
        # A token sent must be good, even from an allowed address: a scraper with a revoked
        # token should hear so rather than pass unnoticed.
        user = tokens.token_user(credentials.strip())
        if user is None:
            return _unauthorized("invalid or revoked API token")
    elif _allowed_address(request):
        return None
    elif request.user.is_authenticated:
        user = request.user
    else:
        return _unauthorized(
            "send Authorization: Bearer <token>, or scrape from an address in METRICS_ALLOWED_CIDRS"
        )
    if not roles.has_role(user):
        return _plain(403, roles.no_role_message(user))
    return None


def _allowed_address(request: HttpRequest) -> bool:
    """Say whether the client's address (as the audit trail records it) is in an allowed CIDR."""
    networks = allowed_networks(tuple(getattr(settings, "METRICS_ALLOWED_CIDRS", ())))
    if not networks or _proxied_unknown(request):
        return False
    found = audit.client_ip(request)
    if found is None:
        return False
    address = ipaddress.ip_address(found)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket's ::ffff:10.0.0.5 is 10.0.0.5
    return any(address in network for network in networks if network.version == address.version)


def _proxied_unknown(request: HttpRequest) -> bool:
    """Say whether a proxy forwarded this request without naming the client in a trusted way."""
    meta = request.META
    forwarded_for = meta.get("HTTP_X_FORWARDED_FOR", "").strip()
    if not forwarded_for and not meta.get("HTTP_FORWARDED", "").strip():
        return False
    if getattr(settings, "SECURE_PROXY_SSL_HEADER", None) and forwarded_for:
        return False  # BEHIND_PROXY: the audit trail's address is the one the proxy saw
    # Otherwise REMOTE_ADDR is the proxy's, and an allowed proxy would let every client in.
    if not _warned:
        _warned.append(True)
        logger.warning(
            "metrics: a request came through a proxy (X-Forwarded-For or Forwarded) but the "
            "dashboard does not trust it: address-based access to /metrics is refused for "
            "such requests (a token still works); set BEHIND_PROXY=1 if the proxy sets "
            "X-Forwarded-For"
        )
    return True


_warned: list[bool] = []  # the warning above is logged once per process


@lru_cache(maxsize=8)
def allowed_networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    """Parse the allowed CIDRs (settings checked them at start-up)."""
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def _unauthorized(message: str) -> HttpResponse:
    response = _plain(401, message)
    response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


def _plain(status: int, message: str) -> HttpResponse:
    return HttpResponse(f"{message}\n", status=status, content_type="text/plain; charset=utf-8")


urlpatterns = [path("metrics", metrics_view, name="metrics")]
