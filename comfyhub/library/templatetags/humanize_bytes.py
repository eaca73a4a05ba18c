from django import template

from comfyhub.library.fetch import human

register = template.Library()


@register.filter(name="bytes")
def bytes_(count) -> str:
    return human(count or 0)


@register.filter
def duration(seconds) -> str:
    """A time left as people say it: "45 s", "12 min", "3 h 20 min"."""
    seconds = round(seconds or 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min" if minutes % 60 else f"{minutes // 60} h"
