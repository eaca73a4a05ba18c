import json
import sys

from django.core.management.base import BaseCommand, CommandError

from comfyhub.library import finder
from comfyhub.library.fetch import human
from comfyhub.library.paths import BadInput, check_url


class Command(BaseCommand):
    help = (
        "Find where to get the model file NAME: the link given with it (--url), links "
        "that imported workflows and launcher.json files declared, the local models folder, "
        "ComfyUI-Manager's model list, the official templates, Hugging Face and CivitAI "
        "(a few result pages while none matches); best candidate first. A source that is "
        "down is reported, it does not fail the search. "
        "Exit 0 found at least one candidate, 1 none, 2 bad input."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("name", help="file name as the workflow names it")
        parser.add_argument("--directory", default="", help="ComfyUI models folder, e.g. loras")
        parser.add_argument("--sha256", default="", help="the file's sha256 (64 hex), if known")
        parser.add_argument("--url", default="", help="a link given with the model")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **options) -> None:
        try:
            if options["url"]:
                check_url(options["url"])
            result = finder.find(
                options["name"], options["directory"], options["sha256"], options["url"]
            )
        except BadInput as exc:
            raise CommandError(str(exc), returncode=2) from None
        if options["json"]:
            self.stdout.write(json.dumps(result.as_json()))
        else:
            self.show(result)
        if not result.candidates:
            sys.exit(1)

    def show(self, result: finder.Result) -> None:
        for candidate in result.candidates:
            where = f"{candidate.directory or '?'}/{candidate.filename}"
            size = human(candidate.size) if candidate.size is not None else "size unknown"
            self.stdout.write(f"{candidate.score:>4}  {candidate.source:<11}  {where}  {size}")
            label = f"  ({candidate.label})" if candidate.label else ""
            self.stdout.write(f"      {candidate.url}{label}")
        if not result.candidates:
            self.stderr.write(f"No candidates found for {result.query}.")
        for source, state in result.sources.items():
            self.stdout.write(f"{source}: {state}")
