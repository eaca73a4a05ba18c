"""The "something changed" hint: written after the DB row, so a listener re-reads the row."""

import logging

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer

log = logging.getLogger(__name__)


def group_for(kind: str, pk: int) -> str:
    return f"{kind}-{pk}"


def is_cross_process(layer) -> bool:
    """An in-memory layer only reaches consumers in the sending process."""
    return layer is not None and not isinstance(layer, InMemoryChannelLayer)


def changed(kind: str, pk: int) -> None:
    """Wake every page watching this object. Never raises: the row is already written."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group_for(kind, pk), {"type": "object.changed"})
    except Exception:
        log.warning("live hint for %s %s not sent; pages fall back to polling", kind, pk)


def job_changed_hint(sender, job, **kwargs) -> None:
    changed("job", job.pk)
