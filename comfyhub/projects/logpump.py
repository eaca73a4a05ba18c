"""Runs ComfyUI and copies its output into its log line by line, each line redacted.

ComfyUI outlives the process that launched it, so its output cannot pass through that
process. `python -m comfyhub.projects.logpump LOG CWD -- COMMAND...` starts COMMAND in CWD
as its child (one session and process group: a stop signals both), writes what it prints
into LOG as it prints it, and exits with its exit status. It ignores SIGTERM itself: a
stop waits for ComfyUI's own clean exit, and the pump ends once ComfyUI has.
"""

import signal
import subprocess
import sys
import threading
from typing import BinaryIO

from recovery.redact import redact

# After ComfyUI exits, how long a process it left behind may keep its output open.
DRAIN_SECONDS = 2.0


def copy_lines(source: BinaryIO, log: BinaryIO) -> None:
    for line in source:
        text = redact(line.decode(errors="replace").rstrip("\r\n"))
        try:
            log.write(text.encode() + b"\n")
            log.flush()
        except OSError:
            # A full disk must not stop ComfyUI: it would die on its next print (EPIPE).
            continue


def run(log_path: str, cwd: str, command: list[str]) -> int:
    # The secrets to mask come from Django's settings: load them before ComfyUI prints,
    # and never start it when they cannot be (its lines would go unredacted).
    redact("")
    child = subprocess.Popen(
        command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    # Only now: an ignored signal would be inherited by ComfyUI through exec.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    with open(log_path, "ab") as log:
        copier = threading.Thread(target=copy_lines, args=(child.stdout, log), daemon=True)
        copier.start()
        code = child.wait()
        copier.join(DRAIN_SECONDS)
    return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell says


if __name__ == "__main__":
    log_path, cwd, separator, *command = sys.argv[1:]
    if separator != "--" or not command:
        sys.exit("usage: python -m comfyhub.projects.logpump LOG CWD -- COMMAND...")
    sys.exit(run(log_path, cwd, command))
