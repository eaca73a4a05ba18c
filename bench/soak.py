"""Kill -9 soak: `serve` runs 10 downloads and 2 project installs while its whole process
tree is SIGKILLed again and again, at random moments, and restarted each time.

The downloads come from a loopback server (tests/fileserver.py) that limits each
connection's rate and drops connections mid-body; the installs clone stand-in repos (a
fake ComfyUI and two custom node packs whose install.py notes every run in a trace file,
see tests/fakecomfy.py). A kill stops every process carrying the soak's data dir in its
environment first (so nothing forks a replacement), then kills them all: serve, Daphne,
the worker, django-q2's processes, and whatever git/venv/install.py was running.

At the end, with one last serve left to finish, it checks that
- every job succeeded;
- every file is at its destination with the served bytes (sha256), and nothing else is
  in the models folder (no .part, no sidecar);
- no install step, and no node pack's install.py, ran again after its checkpoint was
  recorded (the job's checkpoint and the logs' lengths are taken after each kill; the step
  a kill interrupted may run again, a finished one may not);
- no process of the soak is left.
It prints the kills, bytes moved ÷ bytes needed and the wall time, and exits 1 on any
failed check.

Run: .venv/bin/python bench/soak.py [--kills 20] [--seed N] (about 3-5 min for 20 kills)
"""

import argparse
import contextlib
import hashlib
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ["COMFYHUB_ALLOW_LOCAL_REPOS"] = "1"
os.environ["COMFYHUB_WORKER_TICK_SECONDS"] = "0.2"
# Two downloads per host run at once (the default limit); two more workers let both
# installs run beside them, so kills land in installs as well as in downloads.
os.environ["COMFYHUB_WORKERS"] = "4"
os.environ["COMFYHUB_LOG_LEVEL"] = "WARNING"  # this process's; serve logs at INFO
for name in ("COMFYHUB_MODELS_DIR", "COMFYHUB_PROJECTS_DIR", "COMFYHUB_PORT"):
    os.environ.pop(name, None)

sys.path.insert(0, str(ROOT / "bench"))
import embedded  # noqa: E402, F401  (Django on a fresh SQLite data dir; sets COMFYHUB_DATA_DIR)
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connections  # noqa: E402
from django.utils import timezone  # noqa: E402

from comfyhub.library.models import Download  # noqa: E402
from comfyhub.projects import install  # noqa: E402
from comfyhub.projects.models import Project  # noqa: E402
from recovery.models import TERMINAL, Attempt, Job, Outcome, Status, WorkerHeartbeat  # noqa: E402
from tests.fakecomfy import comfyui_repo, make_repo  # noqa: E402
from tests.fileserver import FileServer  # noqa: E402

MiB = 1 << 20
DATA_DIR = Path(os.environ["COMFYHUB_DATA_DIR"])
MARKER = f"COMFYHUB_DATA_DIR={DATA_DIR}".encode()
TRACE = DATA_DIR / "install-py.trace"
# A node pack's install.py: a line per run ("<project slug> <pack>"), then a little work,
# so some kills land inside it.
INSTALL_PY = """\
import os, pathlib, time
here = pathlib.Path.cwd()
with open(os.environ["SOAK_TRACE"], "a") as fh:
    fh.write(f"{here.parents[1].name} {here.name}\\n")
time.sleep(0.5)
"""
PACKS = ("SoakPackA", "SoakPackB")


@dataclass
class Snapshot:
    """After a kill: what each install had checkpointed, and how long the logs were."""

    steps: dict[str, list[str]]  # project slug -> steps recorded done
    packs: dict[str, list[str]]  # project slug -> pack folders recorded done
    log_lines: dict[str, int]  # project slug -> install.log lines so far
    trace_lines: int
    jobs: dict[str, tuple]  # job -> (attempts, progress, checkpoint)


@dataclass
class Soak:
    args: argparse.Namespace
    rng: random.Random
    files: FileServer
    expected: dict[str, str] = field(default_factory=dict)  # dest -> sha256
    snapshots: list[Snapshot] = field(default_factory=list)
    kills_at_start: int = 0
    port: int = 0
    proc: subprocess.Popen | None = None
    log = DATA_DIR / "serve.log"

    def env(self) -> dict:
        return {
            **os.environ,
            "COMFYHUB_PORT": str(self.port),
            "COMFYHUB_LOG_LEVEL": "INFO",
            "SOAK_TRACE": str(TRACE),
        }

    def spawn(self) -> float:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), "serve"],
                cwd=ROOT,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return time.monotonic()

    def wait_worker(self, since, timeout: float = 120) -> None:
        """Until this serve's worker beats (an old heartbeat outlives a kill by seconds)."""
        deadline = time.monotonic() + timeout
        while not WorkerHeartbeat.objects.filter(seen_at__gte=since).exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"serve did not come up:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def run_and_kill(self) -> None:
        since = timezone.now()
        spawned = self.spawn()
        if self.rng.random() < 0.2:
            self.kills_at_start += 1
            time.sleep(max(0.0, spawned + self.rng.uniform(0, 3) - time.monotonic()))
        else:
            self.wait_worker(since)
            time.sleep(self.rng.uniform(0, self.args.max_uptime))
        kill_tree()
        self.proc.wait()
        self.snapshots.append(snapshot())

    def finish(self) -> None:
        since = timezone.now()
        self.spawn()
        self.wait_worker(since)
        deadline = time.monotonic() + self.args.timeout
        while Job.objects.exclude(status__in=TERMINAL).exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                break
            time.sleep(0.5)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def soak_processes() -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if MARKER in (entry / "environ").read_bytes().split(b"\0"):
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def kill_tree() -> None:
    """As a power cut: stop every soak process (a stopped one cannot fork a replacement
    for a killed one), then SIGKILL them all, then wait until none is left."""
    stopped: set[int] = set()
    while fresh := soak_processes() - stopped:
        for pid in fresh:
            signal_quietly(pid, signal.SIGSTOP)
        stopped |= fresh
    for pid in stopped:
        signal_quietly(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while soak_processes():
        if time.monotonic() > deadline:
            sys.exit(f"processes survived SIGKILL: {soak_processes()}")
        time.sleep(0.05)


def signal_quietly(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def snapshot() -> Snapshot:
    steps, packs, lines = {}, {}, {}
    for project in Project.objects.select_related("install_job"):
        data = project.install_job.checkpoint_data
        steps[project.slug] = data.get("steps", [])
        packs[project.slug] = [Path(repo).name for repo in data.get("nodes_done", [])]
        lines[project.slug] = len(read_lines(project.install_log))
    jobs = {
        f"{job.kind} #{job.pk}": (job.attempt, job.progress_done, job.checkpoint_data)
        for job in Job.objects.all()
    }
    return Snapshot(steps, packs, lines, len(read_lines(TRACE)), jobs)


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def queue_work(soak: Soak, root: Path) -> int:
    """10 downloads and 2 installs, queued for the worker; the bytes the downloads need."""
    args, rng = soak.args, soak.rng
    needed = 0
    for n in range(args.downloads):
        data = rng.randbytes(args.size * MiB)
        drops = [f"drop:{rng.randrange(len(data))}" for _ in range(args.drops)]
        url = soak.files.add(f"/soak-{n}.bin", data, script=drops, rate=args.rate * 1024)
        dest = f"checkpoints/soak-{n}.safetensors"
        soak.expected[dest] = hashlib.sha256(data).hexdigest()
        Download.objects.queue(url, dest, soak.expected[dest], len(data))
        needed += len(data)
    comfy, comfy_commits = comfyui_repo(root)
    packs = [pack_repo(root / name) for name in PACKS]
    for name in ("Soak One", "Soak Two"):
        spec = {
            "comfyui": {"repository": str(comfy), "commit": comfy_commits[0]},
            "nodes": [{"repository": str(path), "commit": commit} for path, commit in packs],
            "models": [],
            "workflow": {"nodes": []},
            "workflow_name": "soak",
        }
        install.create(name, spec).install_job.dispatch()
    return needed


def pack_repo(path: Path) -> tuple[Path, str]:
    files = {"__init__.py": "NODE_CLASS_MAPPINGS = {}\n", "install.py": INSTALL_PY}
    repo, commits = make_repo(path, files, {"VERSION": "2\n"})
    return repo, commits[0]


# -- checks --------------------------------------------------------------------------------


def failed_jobs() -> list[str]:
    return [
        f"{job}: {job.error_category} {job.error_message}"
        for job in Job.objects.exclude(status=Status.SUCCEEDED)
    ]


def bad_files(expected: dict[str, str]) -> list[str]:
    problems = []
    for dest, digest in expected.items():
        path = settings.MODELS_DIR / dest
        if not path.is_file() or sha256(path) != digest:
            problems.append(f"{dest}: missing or wrong bytes")
    wanted = {settings.MODELS_DIR / dest for dest in expected}
    extra = [p for p in settings.MODELS_DIR.rglob("*") if p.is_file() and p not in wanted]
    return problems + [f"left in the models folder: {path}" for path in extra]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def reruns_after_checkpoint(snapshots: list[Snapshot]) -> list[str]:
    """Steps and install.py runs that started after a kill although recorded done before it."""
    problems = []
    projects = {p.slug: p for p in Project.objects.all()}
    trace = read_lines(TRACE)
    for number, shot in enumerate(snapshots, 1):
        for slug, done in shot.steps.items():
            later = read_lines(projects[slug].install_log)[shot.log_lines[slug] :]
            again = {line.removeprefix("== step ") for line in later} & set(done)
            problems += [f"{slug}: step {step} ran again after kill {number}" for step in again]
        for line in trace[shot.trace_lines :]:
            slug, pack = line.split()
            if pack in shot.packs.get(slug, []):
                problems.append(f"{slug}: {pack}'s install.py ran again after kill {number}")
    return sorted(set(problems))


def lost_streak(snapshots: list[Snapshot]) -> tuple[int, str]:
    """The most kills in a row that each cut short an attempt of the same job that had
    neither moved its progress nor its checkpoint: what a limit on lost attempts without
    progress would count. Taken from the database after each kill."""
    longest, where, streaks = 0, "", {}
    for before, after in itertools.pairwise(snapshots):
        for job, (attempts, *state) in after.jobs.items():
            previous = before.jobs.get(job, (0, None, None))
            ran, stalled = attempts > previous[0], state == list(previous[1:])
            streaks[job] = streaks.get(job, 0) + 1 if ran and stalled else 0
            if streaks[job] > longest:
                step = (state[1] or {}).get("current")
                longest, where = streaks[job], f"{job}, in step {step}" if step else job
    return longest, where


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed")
    parser.add_argument("--downloads", type=int, default=10)
    parser.add_argument("--size", type=int, default=8, help="MiB per download")
    parser.add_argument("--rate", type=int, default=512, help="KiB/s per connection")
    parser.add_argument("--drops", type=int, default=2, help="scripted drops per file")
    parser.add_argument("--max-uptime", type=float, default=12.0, help="seconds before a kill")
    parser.add_argument("--timeout", type=float, default=900.0, help="for the last run")
    parser.add_argument("--verbose", action="store_true", help="every GET of every file")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    print(f"seed {seed}, data dir {DATA_DIR}")
    call_command("migrate", verbosity=0)
    started = time.monotonic()
    with FileServer() as files:
        soak = Soak(args, random.Random(seed), files, port=free_port())
        needed = queue_work(soak, DATA_DIR / "repos")
        initial = snapshot()
        connections.close_all()
        for _ in range(args.kills):
            soak.run_and_kill()
        soak.finish()
        moved = files.bytes_sent()
        gets = [r for r in files.requests if r["method"] == "GET"]
        statuses = [r["status"] for r in gets]
        if args.verbose:
            for r in sorted(gets, key=lambda r: r["path"]):
                print(r["path"], r["status"], r["headers"].get("range", "-"), r["sent"])
    wall = time.monotonic() - started
    problems = [
        *failed_jobs(),
        *bad_files(soak.expected),
        *reruns_after_checkpoint(soak.snapshots),
        *[f"process left: {pid}" for pid in soak_processes()],
    ]
    print(f"kills: {args.kills} ({soak.kills_at_start} while serve was starting)")
    print(f"bytes moved / needed: {moved / needed:.3f} ({moved} / {needed})")
    print(
        f"GETs: {len(statuses)}, of which resumed (206): {statuses.count(206)}, "
        f"whole file (200): {statuses.count(200)} for {args.downloads} files"
    )
    print(f"wall time: {wall:.0f} s")
    lost = Attempt.objects.filter(outcome=Outcome.LOST)
    print(
        f"attempts lost to a kill: {lost.filter(job__kind='download').count()} of downloads, "
        f"{lost.filter(job__kind='project_install').count()} of installs; longest run "
        "without progress in between: {} ({})".format(*lost_streak([initial, *soak.snapshots]))
    )
    for problem in problems:
        print("FAIL", problem)
    if problems:
        print(f"{len(problems)} problem(s); logs and database kept in {DATA_DIR}")
        return 1
    shutil.rmtree(DATA_DIR)
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
