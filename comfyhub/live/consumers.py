"""WebSocket consumers that keep a server-rendered fragment current.

On connect the consumer sends the object's fragment (root with `id` + `hx-swap-oob`), then
re-renders it whenever the object changes: woken by an `object.changed` hint when the
channel layer reaches across processes, else by re-reading the row every
LIVE_POLL_SECONDS (the embedded default's worker runs in another process). It closes with
1000 once the object reaches a terminal state.
"""

import asyncio
from collections.abc import Callable

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.template.loader import select_template

from comfyhub.live.broadcast import group_for, is_cross_process
from recovery.models import Job

# Extra template context per job kind, registered by the app that owns the kind (e.g. a
# download card needs its Download row): {kind: callable(job) -> dict}.
CONTEXT: dict[str, Callable[[Job], dict]] = {}


def card_context(kind: str):
    def register(func: Callable[[Job], dict]) -> Callable[[Job], dict]:
        CONTEXT[kind] = func
        return func

    return register


class LiveConsumer(AsyncWebsocketConsumer):
    kind = ""

    def load(self, pk: int):
        """Return (version, html, terminal) for the object, or None when it is gone."""
        raise NotImplementedError

    async def connect(self) -> None:
        user = self.scope.get("user")
        if settings.LOGIN_REQUIRED and not (user and user.is_authenticated):
            await self.close()
            return
        self.pk = int(self.scope["url_route"]["kwargs"]["pk"])
        self.group = group_for(self.kind, self.pk)
        self.version = None
        self.poller = None
        await self.accept()
        await self.channel_layer.group_add(self.group, self.channel_name)
        if await self.refresh() and not is_cross_process(self.channel_layer):
            self.poller = asyncio.create_task(self.poll())

    async def disconnect(self, code: int) -> None:
        if getattr(self, "poller", None):
            self.poller.cancel()
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def object_changed(self, event: dict) -> None:
        await self.refresh()

    async def poll(self) -> None:
        while await self.refresh():
            await asyncio.sleep(settings.LIVE_POLL_SECONDS)

    async def refresh(self) -> bool:
        """Send the fragment if it changed; return False once the socket is done."""
        state = await database_sync_to_async(self.load)(self.pk)
        if state is None:
            await self.close(code=4404)
            return False
        version, html, terminal = state
        if version != self.version:
            self.version = version
            await self.send(text_data=html)
        if terminal:
            await self.close(code=1000)
            return False
        return True


class JobConsumer(LiveConsumer):
    """A job's card; a kind may bring its own (templates/live/<kind>.html)."""

    kind = "job"

    def load(self, pk: int):
        job = Job.objects.filter(pk=pk).first()
        if job is None:
            return None
        template = select_template([f"live/{job.kind}.html", "live/job.html"])
        context = {"job": job, "oob": True, "csrf_token": self.csrf_token()}
        if job.kind in CONTEXT:
            context.update(CONTEXT[job.kind](job))
        return job.updated_at, template.render(context), job.is_terminal

    def csrf_token(self) -> str:
        # Forms inside a pushed fragment must post like the page's own; the cookie's
        # secret is a valid token for the same browser.
        return self.scope.get("cookies", {}).get(settings.CSRF_COOKIE_NAME, "")
