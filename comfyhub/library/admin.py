"""Stored tokens in the admin: which are set and when, masked; never the token itself.

Tokens are saved and cleared on the Settings page (validated there, sealed on the way in),
so the admin cannot add or edit one; deleting stays allowed, like Clear. The local model
index is listed too, with what the one-copy store saves.
"""

from django.contrib import admin
from django.http import HttpRequest

from comfyhub.library import store
from comfyhub.library.models import KnownModel, LocalModel, StoredToken, mask


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows other code writes: listed and deletable here, never added or edited."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(StoredToken)
class StoredTokenAdmin(ReadOnlyAdmin):
    list_display = ("name", "token", "updated_at")
    fields = readonly_fields = ("name", "token", "updated_at")

    @admin.display(description="token")
    def token(self, stored: StoredToken) -> str:
        value = stored.value
        return mask(value) if value else "can't be read; enter it again on the Settings page"


@admin.register(KnownModel)
class KnownModelAdmin(ReadOnlyAdmin):
    """What imported files taught the finder; read-only (imports write it), deletable."""

    list_display = ("directory", "name", "url", "sha256", "origin", "seen_at")
    search_fields = ("name", "url", "sha256", "origin")
    readonly_fields = ("directory", "name", "url", "sha256", "size", "origin", "seen_at")


@admin.register(LocalModel)
class LocalModelAdmin(ReadOnlyAdmin):
    """The local model index, read-only (the models folder is the truth; downloads and
    scans write it), with the bytes the one-copy store saves above the list."""

    list_display = ("directory", "name", "size", "sha256", "seen_at")
    list_filter = ("directory",)
    search_fields = ("name", "sha256")

    def changelist_view(self, request: HttpRequest, extra_context=None):
        extra_context = {**(extra_context or {}), "store": store.stats()}
        return super().changelist_view(request, extra_context)
