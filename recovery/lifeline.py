"""Processes that die with their parent: Linux's parent-death signal.

A worker is a tree (`worker` → django-q2's sentinel → its worker, pusher and monitor
processes), and `serve` adds a level above it. None of them notices that its parent was
SIGKILLed: the orphans keep the port, keep pulling queue messages and keep running jobs
beside the next `serve`. PR_SET_PDEATHSIG has the kernel SIGKILL a process when the
thread that created it exits. The setting survives exec but not fork, so every level sets
it for itself: `die_with_parent` in a Popen's preexec_fn, `tie_forks_to_parent` for the
processes multiprocessing forks. Linux only, as the rest of the process handling is.
"""

import ctypes
import os
import select
import signal

PR_SET_PDEATHSIG = 1
libc = ctypes.CDLL(None, use_errno=True)
# Set in the parent just before each fork; the child reads its copy to learn its parent.
forking_pid = 0
tied = False


def die_with_parent(parent_pid: int) -> None:
    """In a new child: SIGKILL it when `parent_pid` exits, at once if it already has."""
    unused = ctypes.c_ulong(0)
    if libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), unused, unused, unused):
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    # The parent may have died between fork() and prctl(); no signal would come then.
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


def tie_forks_to_parent() -> None:
    """From now on every fork made here, and every fork a fork makes, dies with its
    parent. Only os.fork()/multiprocessing run these hooks: subprocess's fork+exec does
    not, so a child process a job starts (pip, ComfyUI) is not affected."""
    global tied
    if not tied:
        os.register_at_fork(before=note_forking_pid, after_in_child=die_with_forking_parent)
        tied = True


def note_forking_pid() -> None:
    global forking_pid
    forking_pid = os.getpid()


def die_with_forking_parent() -> None:
    die_with_parent(forking_pid)


def exited_within(pid: int, timeout: float) -> bool:
    """Wait (without polling) until `pid` has exited or `timeout` passed."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)
