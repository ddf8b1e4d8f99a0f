"""Cache a page region's HTML by the value it shows, in this process."""

from __future__ import annotations

import itertools
import secrets
import threading
from collections import OrderedDict
from collections.abc import Hashable

from django import template
from django.template.base import FilterExpression, Node, NodeList, Parser, Token
from django.template.context import Context
from django.urls import get_script_prefix
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from django.utils.timezone import get_current_timezone_name

register = template.Library()

# Regions kept per process; the overview needs one per distinct matrix (ages change each minute).
SIZE = 64
# Stands for the request's CSRF token in the cached HTML: tokens are per session, never shared.
CSRF_PLACEHOLDER = f"csrf{secrets.token_hex(16)}"

_cache: OrderedDict[tuple[int, str, str, Hashable], str] = OrderedDict()
_lock = threading.Lock()
# Each parsed tag gets its own number, so an edited and re-read template never meets old HTML.
_numbers = itertools.count()


class FragmentNode(Node):
    """Render the body once per value of the key, then serve it with this request's CSRF token."""

    def __init__(self, nodelist: NodeList, key: FilterExpression) -> None:
        self.nodelist = nodelist
        self.key = key
        self.number = next(_numbers)

    def render(self, context: Context) -> SafeString:
        # What the body's {% url %} and |date read besides the key: the mount point and zone.
        key = (
            self.number,
            get_script_prefix(),
            get_current_timezone_name(),
            self.key.resolve(context),
        )
        with _lock:
            html = _cache.get(key)
            if html is not None:
                _cache.move_to_end(key)
        if html is None:
            with context.push(csrf_token=CSRF_PLACEHOLDER):
                html = self.nodelist.render(context)
            with _lock:
                _cache[key] = html
                while len(_cache) > SIZE:
                    _cache.popitem(last=False)
        token = context.get("csrf_token")
        # Without a token the forms carry an empty one, which the CSRF check refuses alike.
        real = "" if token is None or str(token) == "NOTPROVIDED" else str(token)
        return mark_safe(html.replace(CSRF_PLACEHOLDER, escape(real)))  # noqa: S308 (our own rendering)


@register.tag
def fragment(parser: Parser, token: Token) -> FragmentNode:
    """Cache the enclosed HTML by a key value: `{% fragment matrix %}…{% endfragment %}`.

    The body may depend on nothing but the key (compared by value) and the CSRF token.
    """
    bits = token.split_contents()
    if len(bits) != 2:
        raise template.TemplateSyntaxError(f"{bits[0]} takes one key: {{% {bits[0]} value %}}")
    nodelist = parser.parse(("endfragment",))
    parser.delete_first_token()
    return FragmentNode(nodelist, parser.compile_filter(bits[1]))
