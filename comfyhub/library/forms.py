from django import forms
from django.conf import settings

from comfyhub.library.paths import BadInput, check_sha256, check_url, models_path


class DownloadForm(forms.Form):
    url = forms.CharField(max_length=2000, label="URL")
    dest = forms.CharField(
        max_length=500, label="Save as", help_text="DIR/NAME in the models folder"
    )
    sha256 = forms.CharField(max_length=64, required=False, label="sha256 (optional)")

    def clean_url(self) -> str:
        return checked(check_url, self.cleaned_data["url"])

    def clean_dest(self) -> str:
        dest = self.cleaned_data["dest"].strip()
        checked(models_path, dest, settings.MODELS_DIR)
        return dest

    def clean_sha256(self) -> str:
        return checked(check_sha256, self.cleaned_data["sha256"])


def checked(check, *args):
    try:
        return check(*args)
    except BadInput as exc:
        raise forms.ValidationError(str(exc)) from None
