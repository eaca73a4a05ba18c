"""WebSockets open only from a page of the host that served them.

A browser sends a site's cookies with any page's WebSocket handshake and no CORS rule
applies, so the Origin header is what stops a foreign page from opening a live socket as
the logged-in user. Channels' AllowedHostsOriginValidator matches Origin against
ALLOWED_HOSTS, which is `*` when ComfyHub serves on 0.0.0.0 (any origin passes) and
ignores the port on loopback (any local dev server passes). This matches it the way a
browser defines same-origin: against the handshake's own Host header, port included.
"""

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

DEFAULT_PORTS = {"http": 80, "https": 443}


class SameOriginValidator:
    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        headers = {name: value.decode("latin-1") for name, value in scope["headers"]}
        if allowed(headers.get(b"origin"), headers.get(b"host")):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)


def allowed(origin: str | None, host: str | None) -> bool:
    if origin is None:
        # Browsers always send Origin with a WebSocket; a client that does not is no page
        # anyone was lured to. Off loopback it still gets nothing without a page.
        return not settings.LOGIN_REQUIRED
    # Every HTTP/1.1 handshake names its host; only in-process test clients may not.
    host = host or f"{settings.HOST}:{settings.PORT}"
    domain, _ = split_domain_port(host)
    # ALLOWED_HOSTS as for pages: a rebound DNS name matches its own Origin, not the list.
    return validate_host(domain, settings.ALLOWED_HOSTS) and same_origin(origin, host)


def same_origin(origin: str, host: str) -> bool:
    page = urlsplit(origin)
    if page.scheme not in DEFAULT_PORTS:
        return False  # "null" (sandboxed or file:// pages) and anything not a web page
    served = urlsplit(f"{page.scheme}://{host}")
    default = DEFAULT_PORTS[page.scheme]
    try:
        return (page.hostname, page.port or default) == (served.hostname, served.port or default)
    except ValueError:  # a port that is not a number
        return False
