import json

from django.core.management.base import BaseCommand, CommandError

from comfyhub.library import store
from comfyhub.library.fetch import human


class Command(BaseCommand):
    help = (
        "List the one-copy store's entries that no name in the models folder links to any "
        "more (<models>/.store/sha256/…, link count 1), with their sizes. A dry run by "
        "default: nothing is deleted until you run it again with --yes. Only store entries "
        "are ever deleted (never a .part, never a model file, nothing outside .store), with "
        "the store's temporary names left by a killed process over an hour ago. "
        "Exit 0."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--yes", action="store_true", help="delete the listed entries")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **options) -> None:
        if linked := store.linked_folder():
            raise CommandError(
                f"{linked} is a symbolic link; the one-copy store must be a real folder "
                "inside the models folder. Nothing was listed or deleted."
            )
        unlinked = store.unlinked()
        total = sum(entry.size for entry in unlinked)
        # With --yes, temporary names a killed process left in the store go too.
        freed = store.prune(unlinked) + store.prune_temporaries() if options["yes"] else 0
        if options["json"]:
            self.stdout.write(json.dumps(report(unlinked, total, freed, options["yes"])))
            return
        for entry in unlinked:
            self.stdout.write(f"{human(entry.size):>10}  {entry.path}")
        if options["yes"]:
            self.stdout.write(
                f"Deleted {len(unlinked)} unlinked store entries; freed {human(freed)}."
            )
        elif unlinked:
            self.stdout.write(
                f"Would free {human(total)} ({total:,} bytes) from {len(unlinked)} unlinked "
                "store entries; run with --yes to delete them."
            )
        else:
            self.stdout.write("Every store entry is in use; nothing to prune.")


def report(unlinked: list[store.Entry], total: int, freed: int, deleted: bool) -> dict:
    return {
        "entries": [{"path": str(e.path), "bytes": e.size} for e in unlinked],
        "bytes": total,
        "deleted": deleted,
        "freed": freed,
    }
