from comfyhub.library.fetch import fetch
from comfyhub.library.models import Download
from recovery.engine import recoverable
from recovery.models import Job


def discard_partial(job: Job) -> None:
    """Cancelling a download deletes its .part; pausing keeps it."""
    download = Download.objects.filter(job=job).first()
    if download:
        download.discard_partial()


@recoverable("download", on_cancel=discard_partial)
def download(job: Job) -> None:
    fetch(job)
