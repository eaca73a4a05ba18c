"""Stored tokens in the admin: which are set and when, masked; never the token itself.

Tokens are saved and cleared on the Settings page (validated there, sealed on the way in),
so the admin cannot add or edit one; deleting stays allowed, like Clear.
"""

from django.contrib import admin
from django.http import HttpRequest

from comfyhub.library.models import KnownModel, StoredToken, mask


@admin.register(StoredToken)
class StoredTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "token", "updated_at")
    fields = readonly_fields = ("name", "token", "updated_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    @admin.display(description="token")
    def token(self, stored: StoredToken) -> str:
        value = stored.value
        return mask(value) if value else "can't be read; enter it again on the Settings page"


@admin.register(KnownModel)
class KnownModelAdmin(admin.ModelAdmin):
    """What imported files taught the finder; read-only (imports write it), deletable."""

    list_display = ("directory", "name", "url", "sha256", "origin", "seen_at")
    search_fields = ("name", "url", "sha256", "origin")
    readonly_fields = ("directory", "name", "url", "sha256", "size", "origin", "seen_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
