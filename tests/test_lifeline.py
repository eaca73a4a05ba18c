"""recovery.lifeline: forked processes die with their parent, at every level."""

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from recovery.lifeline import exited_within
from tests.conftest import ROOT, wait_until

# Forks a child that forks a grandchild (as django-q2's cluster and sentinel do), prints
# both pids and waits to be killed.
TREE = """
import multiprocessing, signal
from recovery.lifeline import tie_forks_to_parent

def grandchild():
    signal.pause()

def child():
    multiprocessing.get_context("fork").Process(target=grandchild).start()
    signal.pause()

tie_forks_to_parent()
fork = multiprocessing.get_context("fork").Process(target=child)
fork.start()
print(fork.pid, flush=True)
signal.pause()
"""


def start_tree() -> tuple[subprocess.Popen, list[int]]:
    top = subprocess.Popen(
        [sys.executable, "-c", TREE], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    child = int(top.stdout.readline())
    grandchildren = wait_for_children(child)
    return top, [child, *grandchildren]


def wait_for_children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = wait_until(lambda: children.read_text().split(), 30, f"{pid} to fork")
    return [int(p) for p in found]


def test_forks_of_forks_die_when_the_top_process_is_sigkilled():
    top, descendants = start_tree()
    top.kill()
    top.wait()
    try:
        assert all(exited_within(pid, 10) for pid in descendants)
    finally:
        for pid in descendants:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
