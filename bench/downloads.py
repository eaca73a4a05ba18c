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
(5) 256 MiB from a second server on the same files that caps each connection at
    16 MiB/s (as CDNs do): the whole ComfyHub command (its default connections) against
    `curl -s -o` and `aria2c -x4 -s4`, median of 3, order rotated per round. Then the
    ComfyHub download is SIGKILLed once the server has sent half the file and run again
    to completion: body bytes the server sent for both runs, against the size.
(6) Uncapped 1 GiB: the whole `manage.py download --sha256` command against bare
    `curl -o`, median of 3.
(start) Start-up: `manage.py download --help`, and from spawning the download command to
    its first request line reaching the server (a 1 MiB file), medians of 5.
Run order is start, (1), (4), (5), (6), (2)+(3): a drops run may leave the host's circuit
breaker open, and the kill of (5) is a fault the breaker must not count.

COMFYHUB_* variables in the caller's environment reach the download command;
PYTHONDONTWRITEBYTECODE does not (a user's Python caches bytecode: a command that
compiles its ~100 modules again on every run is not what anyone measures).
Everything lives in one temp dir (about 10 GiB at the peak) removed at the end.
Run: .venv/bin/python bench/downloads.py [--only 5,6,start] [--scale 0.125]
[--connections N] (--scale shrinks every file, for a quick run while developing;
--connections is passed to the download command only when it has that option).
"""

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
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
FILES = {"1m.bin": MiB, "256m.bin": 256 * MiB, "1g.bin": GiB, "4g.bin": 4 * GiB}
NEEDS = {"start": "1m.bin", "1": "1g.bin", "2": "256m.bin", "4": "4g.bin", "5": "256m.bin"}
NEEDS["3"], NEEDS["6"] = NEEDS["2"], NEEDS["1"]
FIGURES = ["start", "1", "4", "5", "6", "2", "3"]  # run order (see the docstring)
ROUNDS = 3
DROPS = 10
DROP_BUDGET = 120
TIMEOUT = 600
CAP = 16 * MiB  # bytes/s per connection in (5)
ARIA2 = ["aria2c", "-x4", "-s4", "--allow-overwrite=true", "--file-allocation=none", "-q"]


class Bench:
    def __init__(self, work: Path, server: FileServer, digests: dict[str, str]):
        self.work = work
        self.server = server
        self.digests = digests
        self.extra: list[str] = []  # more arguments for every download command
        self.models = work / "data" / "models"
        self.logs = work / "logs"
        self.logs.mkdir()
        self.env = {
            **os.environ,
            "COMFYHUB_DATA_DIR": str(work / "data"),
            "COMFYHUB_STALL_TIMEOUT": "10",
            "COMFYHUB_LOG_LEVEL": "WARNING",
        }
        for name in (
            "COMFYHUB_DATABASE_URL",
            "COMFYHUB_REDIS_URL",
            "COMFYHUB_MODELS_DIR",
            "PYTHONDONTWRITEBYTECODE",
        ):
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
        return args + self.extra, self.models / dest

    def check_result(self, stdout: bytes, name: str) -> dict:
        result = json.loads(stdout)
        if result["status"] != "succeeded" or result["sha256"] != self.digests[name]:
            sys.exit(f"download of {name} did not succeed: {result}")
        return result

    def connections_option(self, connections: int | None) -> list[str]:
        """`--connections N` if this download command has that option (segmented
        downloads), else nothing: the same bench runs before and after them."""
        if connections is None:
            return []
        if b"--connections" not in self.command([*MANAGE, "download", "--help"], "help").stdout:
            print("    (this download command has no --connections: one stream)", flush=True)
            return []
        return ["--connections", str(connections)]

    def startup(self) -> tuple[float, float, float]:
        """Medians of 5: `download --help`, and spawn -> first request line and whole
        command for a 1 MiB download (the first byte cannot come before that request)."""
        helps = [self.timed([*MANAGE, "download", "--help"], "help")[0] for _ in range(5)]
        firsts, wholes = [], []
        for _ in range(5):
            self.server.reset()
            args, target = self.download_args("1m.bin")
            spawned = time.monotonic()
            self.check_result(self.command(args, f"start-{self.runs}").stdout, "1m.bin")
            wholes.append(time.monotonic() - spawned)
            firsts.append(self.server.request_times[0] - spawned)
            self.forget(target)
        return tuple(statistics.median(runs) for runs in (helps, firsts, wholes))

    def forget(self, target: Path) -> None:
        """Drop a download's output and the one-copy store's entry for it: the next run of
        the same file must come over the network, not be linked from the store."""
        shutil.rmtree(self.models / ".store", ignore_errors=True)
        settle(target)

    def ours(self, name: str) -> float:
        args, target = self.download_args(name)
        seconds, done = self.timed(args, f"ours-{self.runs}")
        self.check_result(done.stdout, name)
        self.forget(target)
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

    def aria2(self, name: str) -> float:
        out = self.work / "aria2.bin"
        args = [*ARIA2, "-d", str(self.work), "-o", out.name, self.server.url(name)]
        seconds, _ = self.timed(args, "aria2c")
        settle(out)
        return seconds

    def rounds(self, variants: dict, name: str) -> dict[str, list["Run"]]:
        """ROUNDS runs of each variant, order rotated per round; what the server did in
        each run kept beside its time."""
        order = list(variants)
        runs: dict[str, list[Run]] = {key: [] for key in variants}
        for round_ in range(ROUNDS):
            for key in order[round_:] + order[:round_]:
                self.server.reset()
                seconds = variants[key](name)
                server = self.server
                runs[key].append(Run(seconds, server.cpu_seconds, server.peak_streams))
        return runs

    def capped(self) -> dict[str, list["Run"]]:
        variants = {"ours": self.ours, "curl": self.bare, "aria2c": self.aria2}
        return self.rounds(variants, "256m.bin")

    def uncapped_gib(self) -> dict[str, list["Run"]]:
        return self.rounds({"ours": self.ours, "curl": self.bare}, "1g.bin")

    def killed_halfway(self, name: str) -> tuple[int, float]:
        """SIGKILL the download once the server has sent half the file, run the same
        command again to completion: (body bytes sent for both runs, the rerun's seconds)."""
        size = size_of(self.server.root / name)
        self.server.reset()
        args, target = self.download_args(name)
        with open(self.logs / "killed.log", "w") as err:
            proc = subprocess.Popen(args, env=self.env, stdout=subprocess.DEVNULL, stderr=err)
            deadline = time.monotonic() + TIMEOUT
            while self.server.body_bytes < size // 2 and proc.poll() is None:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if proc.returncode != -signal.SIGKILL:
            sys.exit(f"the download ended (exit {proc.returncode}) before it was half done")
        seconds, done = self.timed(args, "rerun")
        self.check_result(done.stdout, name)
        self.forget(target)
        return self.server.body_bytes, seconds

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
        size = size_of(self.server.root / name)
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
        self.forget(target)
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


def make_files(folder: Path, files: dict[str, int]) -> dict[str, str]:
    """Write every file as a prefix of one stream (a random block repeated), so one pass
    writes all of them and yields each sha256."""
    step = min(BLOCK, *files.values())
    block = os.urandom(step)
    hasher = hashlib.sha256()
    digests = {}
    handles = {name: open(folder / name, "wb") for name in files}  # noqa: SIM115
    try:
        for written in range(0, max(files.values()), step):
            hasher.update(block)
            for name, size in files.items():
                if written < size:
                    handles[name].write(block)
                if written + step == size:
                    digests[name] = hasher.hexdigest()
    finally:
        for handle in handles.values():
            handle.close()
    os.sync()
    return digests


def require_tools(figures: list[str]) -> None:
    tools = ["curl", "openssl", "sync"] + (["aria2c"] if "5" in figures else [])
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        sys.exit(f"missing: {', '.join(missing)} (e.g. apt-get install -y {' '.join(missing)})")


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(FIGURES), help="e.g. 5,6,start")
    parser.add_argument("--scale", type=float, default=1.0, help="file size factor")
    parser.add_argument("--connections", type=int, help="passed to the download command")
    args = parser.parse_args()
    args.only = [key for key in FIGURES if key in args.only.split(",")]
    if not args.only:
        parser.error(f"--only names none of {', '.join(FIGURES)}")
    return args


def sizes(figures: list[str], scale: float) -> dict[str, int]:
    """The files the chosen figures need; scaled ones stay whole MiB (1m.bin is the
    start-up probe and never scales)."""
    names = {NEEDS[key] for key in figures}
    return {
        name: size if name == "1m.bin" else max(MiB, int(size * scale) // MiB * MiB)
        for name, size in FILES.items()
        if name in names
    }


def main() -> None:
    args = options()
    require_tools(args.only)
    work = Path(tempfile.mkdtemp(prefix="comfyhub-bench-downloads-"))
    try:
        served = work / "served"
        served.mkdir()
        started = time.perf_counter()
        files = sizes(args.only, args.scale)
        digests = make_files(served, files)
        print(f"files written in {time.perf_counter() - started:.1f} s ({work})", flush=True)
        with FileServer(served) as server, FileServer(served, rate=CAP) as capped:
            bench = Bench(work, server, digests)
            bench.command([*MANAGE, "migrate", "--noinput"], "migrate")
            bench.extra = bench.connections_option(args.connections)
            Report(bench, capped, files).run(args.only)
    finally:
        shutil.rmtree(work, ignore_errors=True)


class Report:
    """Details as they come, then the summary lines in figure order."""

    def __init__(self, bench: Bench, capped: FileServer, files: dict[str, int]):
        self.bench = bench
        self.capped = capped
        self.files = files
        self.summary: list[str] = []
        self.figures: list[str] = []

    def run(self, figures: list[str]) -> None:
        self.figures = figures
        for key in figures:
            if key != "3" or "2" not in figures:  # one drops run gives (2) and (3)
                getattr(self, f"figure_{key}")()
        print("\n".join(self.summary))

    def detail(self, line: str) -> None:
        print(f"    {line}", flush=True)

    def figure_start(self) -> None:
        helps, first, whole = self.bench.startup()
        self.detail(f"start-up: download --help {helps:.2f} s")
        self.summary.append(
            f"(start) first request {first:.2f} s after spawning `manage.py download` "
            f"(whole 1 MiB command {whole:.2f} s; --help {helps:.2f} s), medians of 5"
        )

    def figure_1(self) -> None:
        times = self.bench.verified_gib()
        for key, runs in times.items():
            self.detail(f"{key:8} runs: {', '.join(f'{t:.2f}' for t in runs)} s")
        ours, careful, bare = (statistics.median(times[key]) for key in ("ours", "careful", "bare"))
        self.summary.append(
            f"(1) {self.size_text('1g.bin')} verified: ours {ours:.2f} s, careful manual "
            f"(curl+openssl+sync) {careful:.2f} s -> {careful / ours:.2f}x; "
            f"bare curl {bare:.2f} s -> {bare / ours:.2f}x"
        )

    def figure_4(self) -> None:
        seconds, polled, maxrss = self.bench.peak_rss()
        size = self.files["4g.bin"]
        self.detail(
            f"{self.size_text('4g.bin')} download: {seconds:.1f} s, {size / seconds / 1e6:.0f} MB/s"
        )
        self.summary.append(
            f"(4) {self.size_text('4g.bin')}: peak RSS {polled / 1e6:.0f} MB "
            f"(ru_maxrss {maxrss / 1e6:.0f} MB)"
        )

    def figure_5(self) -> None:
        name, size = "256m.bin", self.files["256m.bin"]
        uncapped, self.bench.server = self.bench.server, self.capped
        try:
            runs = self.bench.capped()
            moved, rerun = self.bench.killed_halfway(name)
        finally:
            self.bench.server = uncapped
        for key, each in runs.items():
            self.detail(f"capped {key:7} " + "; ".join(run.text(size) for run in each))
        ours, curl, aria2 = (median_seconds(runs[key]) for key in ("ours", "curl", "aria2c"))
        self.summary.append(
            f"(5) {self.size_text(name)} at {CAP // MiB} MiB/s per connection: "
            f"ours {speed(ours, size)}, curl {speed(curl, size)}, aria2c -x4 -s4 "
            f"{speed(aria2, size)} -> {curl / ours:.2f}x curl (goal >= 3), "
            f"{aria2 / ours:.2f}x aria2c (goal >= 0.9)"
        )
        self.summary.append(
            f"(5) SIGKILL at half-way + rerun ({rerun:.1f} s): server sent "
            f"{moved / MiB:.1f} MiB for {size / MiB:.0f} MiB = size + "
            f"{(moved - size) / MiB:.1f} MiB (goal <= size + 32 MiB)"
        )

    def figure_6(self) -> None:
        name, size = "1g.bin", self.files["1g.bin"]
        runs = self.bench.uncapped_gib()
        for key, each in runs.items():
            self.detail(f"uncapped {key:5} " + "; ".join(run.text(size) for run in each))
        ours, curl = median_seconds(runs["ours"]), median_seconds(runs["curl"])
        self.summary.append(
            f"(6) {self.size_text(name)} uncapped: ours {speed(ours, size)}, curl "
            f"{speed(curl, size)} -> {curl / ours:.2f}x curl's speed (goal >= 0.6)"
        )

    def figure_2(self) -> None:
        drops = self.bench.with_drops()
        self.detail(drops.outcome())
        if "2" in self.figures:
            self.summary.append(f"(2) {self.size_text('256m.bin')}, {DROPS} drops: {drops.moved()}")
        if "3" in self.figures:
            self.summary.append(f"(3) drop -> bytes again: {drops.latency()}")

    def figure_3(self) -> None:
        self.figure_2()

    def size_text(self, name: str) -> str:
        size = self.files[name]
        return f"{size / GiB:g} GiB" if size >= GiB else f"{size / MiB:g} MiB"


@dataclass
class Run:
    seconds: float
    server_cpu: float  # CPU seconds the server's handler threads used
    peak_streams: int

    def text(self, size: int) -> str:
        return (
            f"{speed(self.seconds, size)} (server CPU {self.server_cpu:.2f} s, "
            f"{self.peak_streams} bodies at once)"
        )


def median_seconds(runs: list[Run]) -> float:
    return statistics.median(run.seconds for run in runs)


def speed(seconds: float, size: int) -> str:
    return f"{seconds:.2f} s = {size / MiB / seconds:.0f} MiB/s"


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
