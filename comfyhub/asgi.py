"""ASGI entry point: HTTP through Django, WebSockets under /ws/ through Channels."""

import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "comfyhub.settings")

from comfyhub.config import ConfigError

try:
    from django.core.asgi import get_asgi_application

    django_asgi_app = get_asgi_application()
except ConfigError as exc:
    print(f"comfyhub: configuration error: {exc}", file=sys.stderr)
    sys.exit(2)

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter

from comfyhub.live.origin import SameOriginValidator
from comfyhub.live.routing import websocket_urlpatterns

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
