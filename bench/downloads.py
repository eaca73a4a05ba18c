"""Download engine figures against a loopback file server (bench/fileserver.py).

(1) A verified 1 GiB `manage.py download --sha256` (wall time of the whole command,
    Python start included) against the careful manual path on the same server
    (`curl -s -o F` + `openssl dgst -sha256 F` + `sync F`, summed) and bare `curl -o F`.
    One untimed warm-up, then three runs each, order rotated per round, median reported.
    The served file stays in the page cache for every variant; each output is deleted
    and the disk synced (untimed) before the next variant, so none pays for another's
    writeback.
(2) 256 MiB with 10 connection drops spread over the file: body bytes the server sent
    divided by the file size. The run gets DROP_BUDGET seconds: retry backoff or an open
    circuit breaker can stretch it far beyond, which is a figure, not a reason to hang.
(3) From each drop (server closes the connection) to the first body byte of the next
    request, median over the drops.
(4) Peak RSS (VmHWM, polled every 50 ms, and the kernel's ru_maxrss) of the download
    process fetching 4 GiB.
Run order is (1), (4), (2)+(3): a drops run may leave the host's circuit breaker open.

COMFYHUB_* variables in the caller's environment reach the download command.
Everything lives in one temp dir (about 10 GiB at the peak) removed at the end.
Run: .venv/bin/python bench/downloads.py
"""

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fileserver import FileServer

ROOT = Path(__file__).resolve().parent.parent
MANAGE = [sys.executable, str(ROOT / "manage.py")]
MiB = 1 << 20
GiB = 1 << 30
BLOCK = 64 * MiB
FILES = {"256m.bin": 256 * MiB, "1g.bin": GiB, "4g.bin": 4 * GiB}
ROUNDS = 3
DROPS = 10
DROP_BUDGET = 120
TIMEOUT = 600


class Bench:
    def __init__(self, work: Path, server: FileServer, digests: dict[str, str]):
        self.work = work
        self.server = server
        self.digests = digests
        self.models = work / "data" / "models"
        self.logs = work / "logs"
        self.logs.mkdir()
        self.env = {
            **os.environ,
            "COMFYHUB_DATA_DIR": str(work / "data"),
            "COMFYHUB_STALL_TIMEOUT": "10",
            "COMFYHUB_LOG_LEVEL": "WARNING",
        }
        for name in ("COMFYHUB_DATABASE_URL", "COMFYHUB_REDIS_URL", "COMFYHUB_MODELS_DIR"):
            self.env.pop(name, None)
        self.runs = 0

    def command(self, args: list[str], name: str) -> subprocess.CompletedProcess:
        log = self.logs / f"{name}.log"
        with open(log, "w") as err:
            done = subprocess.run(
                args, env=self.env, stdout=subprocess.PIPE, stderr=err, timeout=TIMEOUT
            )
        if done.returncode != 0:
            sys.exit(f"{' '.join(args)} exited {done.returncode}:\n{log.read_text()[-2000:]}")
        return done

    def timed(self, args: list[str], name: str) -> tuple[float, subprocess.CompletedProcess]:
        start = time.perf_counter()
        done = self.command(args, name)
        return time.perf_counter() - start, done

    def download_args(self, name: str) -> tuple[list[str], Path]:
        self.runs += 1
        dest = f"bench/{self.runs}-{name}"
        url = self.server.url(name)
        args = [*MANAGE, "download", url, "--dest", dest, "--sha256", self.digests[name], "--json"]
        return args, self.models / dest

    def check_result(self, stdout: bytes, name: str) -> dict:
        result = json.loads(stdout)
        if result["status"] != "succeeded" or result["sha256"] != self.digests[name]:
            sys.exit(f"download of {name} did not succeed: {result}")
        return result

    def startup(self) -> float:
        runs = [self.timed([*MANAGE, "download", "--help"], "help")[0] for _ in range(3)]
        return statistics.median(runs)

    def ours(self, name: str) -> float:
        args, target = self.download_args(name)
        seconds, done = self.timed(args, f"ours-{self.runs}")
        self.check_result(done.stdout, name)
        settle(target)
        return seconds

    def careful(self, name: str) -> float:
        out = self.work / "manual.bin"
        fetch, _ = self.timed(["curl", "-s", "-o", str(out), self.server.url(name)], "curl")
        digest, done = self.timed(["openssl", "dgst", "-sha256", str(out)], "openssl")
        if done.stdout.split()[-1].decode() != self.digests[name]:
            sys.exit(f"curl fetched {name} with the wrong sha256: {done.stdout!r}")
        flush, _ = self.timed(["sync", str(out)], "sync")
        settle(out)
        return fetch + digest + flush

    def bare(self, name: str) -> float:
        out = self.work / "bare.bin"
        seconds, _ = self.timed(["curl", "-s", "-o", str(out), self.server.url(name)], "bare")
        settle(out)
        return seconds

    def verified_gib(self) -> dict[str, list[float]]:
        variants = {"ours": self.ours, "careful": self.careful, "bare": self.bare}
        order = list(variants)
        for key in order:  # untimed: the first run of anything pays for cold caches
            variants[key]("1g.bin")
        times: dict[str, list[float]] = {key: [] for key in variants}
        for round_ in range(ROUNDS):
            for key in order[round_:] + order[:round_]:
                times[key].append(variants[key]("1g.bin"))
        return times

    def with_drops(self) -> "DropRun":
        name = "256m.bin"
        size = FILES[name]
        self.server.reset()
        self.server.drop_next([size // (DROPS + 1)] * DROPS)
        args, target = self.download_args(name)
        with open(self.logs / "drops.log", "w") as err:
            proc = subprocess.Popen(args, env=self.env, stdout=subprocess.PIPE, stderr=err)
            try:
                stdout, _ = proc.communicate(timeout=DROP_BUDGET)
                result = json.loads(stdout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                result = None
        part = target.with_name(target.name + ".part")
        kept = max(size_of(target), size_of(part))
        target.unlink(missing_ok=True)
        job = None if result else self.last_job()
        run = DropRun(size, kept, self.server.body_bytes, result or job, *self.server_gaps())
        self.server.reset()
        return run

    def last_job(self) -> dict:
        """The killed download's job as the database has it (status, why it waits)."""
        with contextlib.closing(sqlite3.connect(self.work / "data" / "comfyhub.sqlite3")) as db:
            row = db.execute(
                "SELECT status, attempt, error_category, error_message FROM recovery_job "
                "ORDER BY id DESC LIMIT 1"
            ).fetchone()
        status, attempts, category, message = row
        return {
            "status": f"killed while {status}",
            "attempts": attempts,
            "error": {"category": category, "message": message},
        }

    def server_gaps(self) -> tuple[list[float], float | None]:
        """Drop -> first byte again for each drop; and how long the last drop had been
        waiting if no byte followed it."""
        server = self.server
        gaps = [back - cut for cut, back in zip(server.drops, server.resumes, strict=False)]
        pending = None
        if len(server.drops) > len(server.resumes):
            pending = time.monotonic() - server.drops[-1]
        return gaps, pending

    def peak_rss(self) -> tuple[float, int, int]:
        """(seconds, max VmHWM polled, ru_maxrss from wait4), both in bytes."""
        args, target = self.download_args("4g.bin")
        log = self.logs / "rss.log"
        start = time.perf_counter()
        with open(log, "w") as err:
            proc = subprocess.Popen(args, env=self.env, stdout=subprocess.PIPE, stderr=err)
            polled, (status, usage) = 0, (0, None)
            while True:
                polled = max(polled, high_water(proc.pid))
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                time.sleep(0.05)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout = proc.stdout.read()
        proc.stdout.close()
        if proc.returncode != 0:
            sys.exit(f"4 GiB download exited {proc.returncode}:\n{log.read_text()[-2000:]}")
        self.check_result(stdout, "4g.bin")
        settle(target)
        return seconds, polled, usage.ru_maxrss * 1024


def size_of(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def high_water(pid: int) -> int:
    """VmHWM in bytes; 0 once the process is a zombie (its memory is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def settle(path: Path) -> None:
    """Drop an output and let the disk go quiet, so the next run starts even."""
    path.unlink()
    os.sync()


def make_files(folder: Path) -> dict[str, str]:
    """Write every file as a prefix of one stream (a random 64 MiB block repeated), so
    one pass writes all of them and yields each sha256."""
    block = os.urandom(BLOCK)
    hasher = hashlib.sha256()
    digests = {}
    handles = {name: open(folder / name, "wb") for name in FILES}  # noqa: SIM115
    try:
        for written in range(0, max(FILES.values()), BLOCK):
            hasher.update(block)
            for name, size in FILES.items():
                if written < size:
                    handles[name].write(block)
                if written + BLOCK == size:
                    digests[name] = hasher.hexdigest()
    finally:
        for handle in handles.values():
            handle.close()
    os.sync()
    return digests


def require_tools() -> None:
    missing = [tool for tool in ("curl", "openssl", "sync") if not shutil.which(tool)]
    if missing:
        sys.exit(f"missing: {', '.join(missing)} (e.g. apt-get install -y {' '.join(missing)})")


def main() -> None:
    require_tools()
    work = Path(tempfile.mkdtemp(prefix="comfyhub-bench-downloads-"))
    try:
        served = work / "served"
        served.mkdir()
        started = time.perf_counter()
        digests = make_files(served)
        print(f"files written in {time.perf_counter() - started:.1f} s ({work})", flush=True)
        with FileServer(served) as server:
            bench = Bench(work, server, digests)
            bench.command([*MANAGE, "migrate", "--noinput"], "migrate")
            report(bench)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(bench: Bench) -> None:
    """Details as they come, then the summary. The drops run goes last: it may leave the
    host's circuit breaker open, which would hold back any download after it."""
    print(f"    python + django start: {bench.startup():.2f} s (manage.py download --help)")
    times = bench.verified_gib()
    for key, runs in times.items():
        print(f"    {key:8} runs: {', '.join(f'{t:.2f}' for t in runs)} s", flush=True)
    seconds, polled, maxrss = bench.peak_rss()
    print(f"    4 GiB download: {seconds:.1f} s, {4 * GiB / seconds / 1e6:.0f} MB/s", flush=True)
    drops = bench.with_drops()
    print(drops.outcome(), flush=True)
    ours, careful, bare = (statistics.median(times[key]) for key in ("ours", "careful", "bare"))
    print(
        f"(1) 1 GiB verified: ours {ours:.2f} s, careful manual (curl+openssl+sync) "
        f"{careful:.2f} s -> {careful / ours:.2f}x; bare curl {bare:.2f} s -> {bare / ours:.2f}x"
    )
    print(f"(2) 256 MiB, {DROPS} drops: {drops.moved()}")
    print(f"(3) drop -> bytes again: {drops.latency()}")
    print(f"(4) 4 GiB: peak RSS {polled / 1e6:.0f} MB (ru_maxrss {maxrss / 1e6:.0f} MB)")


@dataclass
class DropRun:
    size: int
    kept: int  # bytes in the destination or the .part when the run ended
    moved_bytes: int  # body bytes the server sent
    result: dict  # the --json answer, or the job row when the budget ran out
    gaps: list[float]
    pending: float | None

    def outcome(self) -> str:
        error = self.result["error"] or {}
        line = f"    drops run: {self.result['status']} after {self.result['attempts']} attempts"
        if self.result["status"] != "succeeded":
            line += f" with {self.kept / MiB:.0f} of {self.size / MiB:.0f} MiB (budget "
            line += f"{DROP_BUDGET} s); last error {error.get('category')}: {error.get('message')}"
        return line

    def moved(self) -> str:
        if self.result["status"] == "succeeded":
            return f"moved {self.moved_bytes / self.size:.3f}x of size"
        return (
            f"unfinished; moved {self.moved_bytes / MiB:.0f} MiB for {self.kept / MiB:.0f} MiB "
            f"kept ({self.moved_bytes / max(self.kept, 1):.3f}x)"
        )

    def latency(self) -> str:
        waits = ", ".join(f"{gap:.2f}" for gap in self.gaps)
        if self.pending is not None:
            waits += f", still waiting after {self.pending:.1f} s"
        if not self.gaps:
            return f"no byte after any drop ({waits})"
        return f"median {statistics.median(self.gaps):.2f} s ({len(self.gaps)} drops: {waits})"


if __name__ == "__main__":
    main()
