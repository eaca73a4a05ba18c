import re

from django import forms
from django.conf import settings

from comfyhub.library.models import StoredToken, TokenName, mask
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


class DownloadFilter(forms.Form):
    """`?status=failed` on /downloads/; no status lists every download."""

    status = forms.ChoiceField(choices=[("", "All"), *Status.choices], required=False)
