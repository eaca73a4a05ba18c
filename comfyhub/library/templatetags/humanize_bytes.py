from django import template

from comfyhub.library.fetch import human

register = template.Library()


@register.filter(name="bytes")
def bytes_(count) -> str:
    return human(count or 0)
