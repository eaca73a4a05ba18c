import re

from django import forms
from django.conf import settings

from comfyhub.config import parse_rate
from comfyhub.library.fetch import human
from comfyhub.library.models import Preference, PreferenceName, StoredToken, TokenName, mask
from comfyhub.library.paths import (
    BadInput,
    check_destination,
    check_sha256,
    check_size,
    check_url,
)
from recovery.models import Status


class DownloadForm(forms.Form):
    url = forms.CharField(max_length=2000, label="URL")
    dest = forms.CharField(
        max_length=500, label="Save as", help_text="DIR/NAME in the models folder"
    )
    sha256 = forms.CharField(max_length=64, required=False, label="sha256 (optional)")
    size = forms.IntegerField(required=False, label="Size in bytes (optional)")

    def clean_url(self) -> str:
        return checked(check_url, self.cleaned_data["url"])

    def clean_dest(self) -> str:
        dest = self.cleaned_data["dest"].strip()
        checked(check_destination, dest, settings.MODELS_DIR)
        return dest

    def clean_sha256(self) -> str:
        return checked(check_sha256, self.cleaned_data["sha256"])

    def clean_size(self) -> int | None:
        return checked(check_size, self.cleaned_data["size"])


def checked(check, *args):
    try:
        return check(*args)
    except BadInput as exc:
        raise forms.ValidationError(str(exc)) from None


# One line of visible ASCII: what every host's tokens look like, and nothing that could
# break out of an Authorization header.
TOKEN_SHAPE = re.compile(r"[\x21-\x7e]+")


class TokenForm(forms.Form):
    """Save or clear one host token. Write-only: the input never renders a value."""

    name = forms.ChoiceField(choices=TokenName.choices, widget=forms.HiddenInput)
    token = forms.CharField(
        max_length=512,
        required=False,
        label="New token",
        widget=forms.PasswordInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    action = forms.ChoiceField(choices=[("save", "Save"), ("clear", "Clear")])

    def clean_token(self) -> str:
        token = self.cleaned_data["token"]
        if token and not TOKEN_SHAPE.fullmatch(token):
            raise forms.ValidationError(
                "A token is one line of letters, digits and punctuation without spaces; "
                "copy it again from the site."
            )
        return token

    def clean(self) -> dict:
        data = super().clean()
        if data.get("action") == "save" and not data.get("token") and "token" not in self.errors:
            self.add_error(
                "token", "Paste the token first, or press Clear to remove the saved one."
            )
        return data

    def save(self) -> str:
        """Store or clear the token; returns what to tell the user (never the token)."""
        name = TokenName(self.cleaned_data["name"])
        if self.cleaned_data["action"] == "clear":
            StoredToken.objects.filter(name=name).delete()
            if getattr(settings, name):
                return (
                    f"{name.label} token cleared; downloads use {name.value} from the environment."
                )
            return f"{name.label} token cleared."
        StoredToken.objects.store(name, self.cleaned_data["token"])
        return (
            f"{name.label} token saved ({mask(self.cleaned_data['token'])}). New downloads use "
            "it; press Retry now on one that failed for a missing token."
        )


class BandwidthForm(forms.Form):
    """Set or clear the Settings page's bandwidth limit (it wins over the environment's)."""

    limit = forms.CharField(
        max_length=32,
        required=False,
        label="Limit in bytes per second",
        help_text="For example 50M or 2.5MB (K, M, G count thousands; KiB, MiB, GiB 1024s). "
        "Empty or 0: no limit.",
    )
    action = forms.ChoiceField(choices=[("save", "Save"), ("clear", "Clear")])

    def clean_limit(self) -> int | None:
        try:
            return parse_rate(self.cleaned_data["limit"])
        except ValueError as exc:
            raise forms.ValidationError(f"{exc}.") from None

    def save(self) -> str:
        """Store or clear the limit; returns what to tell the user."""
        name = PreferenceName.BANDWIDTH_LIMIT
        if self.cleaned_data["action"] == "clear":
            Preference.objects.filter(name=name).delete()
            return "Bandwidth limit cleared; downloads follow COMFYHUB_BANDWIDTH_LIMIT again."
        rate = self.cleaned_data["limit"]
        Preference.objects.store(name, str(rate or ""))
        if rate is None:
            return "No bandwidth limit: downloads go as fast as they can, within seconds."
        return f"Downloads together now stay under {human(rate)}/s, within seconds."


class DownloadFilter(forms.Form):
    """`?status=failed` on /downloads/; no status lists every download."""

    status = forms.ChoiceField(choices=[("", "All"), *Status.choices], required=False)
