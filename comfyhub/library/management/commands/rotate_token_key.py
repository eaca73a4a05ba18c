import json

from django.conf import settings
from django.core.management.base import BaseCommand

from comfyhub.library import sealing
from comfyhub.library.models import StoredToken


class Command(BaseCommand):
    help = (
        "Seal every token saved on the Settings page under a new key, then drop the old key. "
        "The key file in the data dir gets the new key; a running serve uses it at once. "
        "With COMFYHUB_TOKEN_KEY set, put the new key first in it (comma-separated), run "
        "this, then remove the others. A token no key opens is counted and left to be "
        "entered again on the Settings page. Exit 0."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **options) -> None:
        resealed, unreadable = StoredToken.objects.rotate_key()
        key = str(settings.TOKEN_KEY_FILE) if sealing.keys_in_file() else "COMFYHUB_TOKEN_KEY"
        if options["json"]:
            report = {"resealed": resealed, "unreadable": unreadable, "key": key}
            self.stdout.write(json.dumps(report))
            return
        if sealing.keys_in_file():
            self.stdout.write(f"Sealed {resealed} stored token(s) under a new key in {key}.")
        else:
            self.stdout.write(
                f"Sealed {resealed} stored token(s) under the first key of {key}; now remove "
                f"the other keys from {key}."
            )
        if unreadable:
            self.stdout.write(
                f"{unreadable} stored token{'s' if unreadable > 1 else ''} can't be read (the "
                "key that sealed it was lost): enter it again on the Settings page."
            )
