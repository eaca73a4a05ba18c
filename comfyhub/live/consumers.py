"""The page socket: one WebSocket carries every live fragment on a page.

The page names what it shows live in the URL (comfyhub.live.page.page_url). On connect
the consumer sends what changed since the page was rendered, then looks again every
LIVE_POLL_SECONDS (the embedded default's worker runs in another process, out of reach
of an in-memory channel layer), or at once when an `object.changed` hint arrives for a
watched job. Each look sends only the fragments that changed (`hx-swap-oob`), in one
message. The socket stays open while the page is: the attention banner is always live.
"""

import asyncio
import contextlib
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from comfyhub.live.page import Watch

log = logging.getLogger(__name__)


class PageConsumer(AsyncWebsocketConsumer):
    watch: Watch | None = None
    looker: asyncio.Task | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if settings.LOGIN_REQUIRED and not (user and user.is_authenticated):
            await self.close()
            return
        try:
            self.watch = Watch.from_query(self.scope["query_string"], self.csrf_token())
        except (ValueError, OverflowError):
            await self.close(code=4400)
            return
        await self.accept()
        for group in self.watch.groups:
            await self.channel_layer.group_add(group, self.channel_name)
        self.woken = asyncio.Event()
        self.looker = asyncio.create_task(self.look())

    async def disconnect(self, code: int) -> None:
        if self.looker:
            self.looker.cancel()
        for group in self.watch.groups if self.watch else []:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def object_changed(self, event: dict) -> None:
        self.woken.set()

    async def look(self) -> None:
        try:
            await self.keep_looking()
        except Exception:
            # A dead loop would leave a socket that says nothing; a closed one makes the
            # page reconnect (htmx's ws extension backs off) and start afresh.
            log.exception("page socket stopped looking")
            await self.close(code=1011)

    async def keep_looking(self) -> None:
        while True:
            # Hints only wake the loop: a burst of them (500 downloads reporting) costs
            # one look, not one per hint.
            self.woken.clear()
            groups = set(self.watch.groups)
            if fragments := await database_sync_to_async(self.watch.poll)():
                await self.send(text_data="\n".join(fragments))
            for finished in groups - set(self.watch.groups):
                await self.channel_layer.group_discard(finished, self.channel_name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.woken.wait(), settings.LIVE_POLL_SECONDS)

    def csrf_token(self) -> str:
        # Forms inside a pushed fragment must post like the page's own; the cookie's
        # secret is a valid token for the same browser.
        return self.scope.get("cookies", {}).get(settings.CSRF_COOKIE_NAME, "")
