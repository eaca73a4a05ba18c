from django.urls import path

from comfyhub.live.consumers import PageConsumer

websocket_urlpatterns = [
    path("ws/page/", PageConsumer.as_asgi()),
]
