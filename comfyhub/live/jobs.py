"""The self-test job: proves worker, database, models folder and live updates work."""

import os
import tempfile
import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from recovery.models import Job
from recovery.registry import recoverable


def check_database(current: Job) -> None:
    Job.objects.filter(pk=current.pk).exists()


def check_models_dir(current: Job) -> None:
    fd, path = tempfile.mkstemp(dir=settings.MODELS_DIR, prefix=".selftest-")
    os.close(fd)
    os.unlink(path)


def check_channel_layer(current: Job) -> None:
    async_to_sync(get_channel_layer().group_send)("selftest", {"type": "noop"})


CHECKS = [check_database, check_models_dir, check_channel_layer]


@recoverable("selftest")
def selftest(current: Job) -> None:
    # Paced on purpose: a person watching /system/ sees each step land live.
    pause = float(current.params.get("step_seconds", 0.5))
    first = current.checkpoint_data.get("checks_done", 0)
    current.progress(first, len(CHECKS), "checks")
    for done, check in enumerate(CHECKS[first:], start=first + 1):
        time.sleep(pause)
        check(current)
        current.checkpoint(checks_done=done)
        current.progress(done, len(CHECKS))
