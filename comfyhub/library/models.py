import contextlib
import hashlib
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models.functions import Coalesce
from django.utils import timezone

from comfyhub.library import sealing
from comfyhub.library.paths import (
    DEST_MAX,
    PART,
    SIDECAR,
    SIDECAR_TMP,
    WORKING_SUFFIXES,
    beside,
    canonical,
    file_key,
    host_of,
    models_path,
)
from recovery.errors import JobError
from recovery.models import ACTIVE, TERMINAL, BreakerState, Category, CircuitBreaker, Job, Status

# A request that keeps meeting other processes' rows gives up after this many looks.
JOIN_TRIES = 3


class DownloadQuerySet(models.QuerySet):
    def at_a_glance(self) -> dict:
        """Totals for the downloads in flight (queued, running, waiting), in one query:
        how many, the running ones' summed speed, the bytes still to come of those whose
        size is known (`unsized` counts the rest) and the time left at that speed."""
        flying = self.filter(job__status__in=ACTIVE)
        size = Coalesce("total_bytes", "expected_size")
        running = models.Q(job__status=Status.RUNNING)
        totals = flying.aggregate(
            in_flight=models.Count("id"),
            running=models.Count("id", filter=running),
            speed=Coalesce(models.Sum("speed", filter=running), 0.0),
            left=Coalesce(models.Sum(size - models.F("bytes_done")), 0),
            unsized=models.Count("id", filter=models.Q(total_bytes=None, expected_size=None)),
        )
        totals["eta"] = totals["left"] / totals["speed"] if totals["speed"] else None
        return totals

    def running_on(self, host: str | None = None):
        running = self.filter(job__status=Status.RUNNING)
        return running.filter(host=host) if host else running

    def connections_on(self, host: str, besides: int) -> int:
        """Connections the running downloads from `host` hold, other than download `besides`."""
        others = self.running_on(host).exclude(pk=besides)
        return others.aggregate(total=models.Sum("connections"))["total"] or 0

    def request(
        self,
        url: str,
        dest: str,
        sha256: str = "",
        size: int | None = None,
        sources: list[str] | None = None,
    ):
        """(download, created): one active download per destination; a second request
        joins it, adding the URLs it brings (`url`, then `sources`) to the joined one's
        mirrors.

        The database decides, not a look before the insert: `active_dest` is unique, so of
        two processes racing for one destination exactly one insert succeeds and the other
        joins that row. Inputs must already be checked (paths.check_url, models_path,
        check_sha256, check_size).
        """
        dest = canonical(dest)
        key = file_key(dest, settings.MODELS_DIR)
        urls = list(dict.fromkeys(u for u in [url, *(sources or [])] if u))
        for _ in range(JOIN_TRIES):
            holder = self.filter(active_dest=key).select_related("job").first()
            if holder and not holder.job.is_terminal:
                holder.add_sources(urls)
                return holder, False
            if holder:
                self.release_stale(key)
                continue
            try:
                return self.start(urls, dest, sha256, size), True
            except IntegrityError:
                continue  # another process inserted first: the next look finds its row
        raise JobError(
            f"Other requests for {dest} kept racing with this one; try again.",
            category=Category.UNKNOWN,
        )

    def start(self, urls: list[str], dest: str, sha256: str, size: int | None) -> "Download":
        host = host_of(urls[0])  # never the user:password@ a URL may carry
        with transaction.atomic():
            job = Job.objects.create(kind="download", params={"dest": dest}, breaker_key=host)
            return self.create(
                job=job,
                source_url=urls[0],
                sources=urls,
                dest=dest,
                active_dest=file_key(dest, settings.MODELS_DIR),
                host=host,
                expected_sha256=sha256,
                expected_size=size,
            )

    def release_stale(self, key: str) -> int:
        """Free the file `key` (paths.file_key) from a download whose job ended but that
        still holds it (the process died between the job's last write and the hand-back)."""
        return self.filter(active_dest=key, job__status__in=TERMINAL).update(active_dest=None)

    def queue(
        self,
        url: str,
        dest: str,
        sha256: str = "",
        size: int | None = None,
        sources: list[str] | None = None,
    ):
        """request() for the worker: a new download is handed to the cluster."""
        download, created = self.request(url, dest, sha256, size, sources)
        if created:
            download.job.dispatch()
        return download, created


class Download(models.Model):
    """A model file on its way into the models folder; the job carries status and errors."""

    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="download")
    source_url = models.URLField(max_length=2000)  # the URL first asked for: sources[0]
    # Mirrors: every URL the file may come from, in order of preference, and the one in
    # use; a source that fails for good (or whose breaker is open) hands over to the next
    # (mirrors.py). `sources_failed` maps an index (as text) to why that source was left
    # for good; a retry forgets it. Rows from before mirrors have no `sources`.
    sources = models.JSONField(default=list, blank=True)
    source_index = models.PositiveSmallIntegerField(default=0)
    sources_failed = models.JSONField(default=dict, blank=True)
    url = models.URLField(max_length=2000, blank=True)  # the file URL after resolution
    dest = models.CharField(max_length=DEST_MAX, db_index=True)  # DIR/NAME in the models folder
    # `dest` while the download is unfinished, NULL once its job ended: the unique index
    # is what keeps one active download per destination (NULLs never collide, on SQLite
    # and PostgreSQL alike). follow_job() keeps it in step with the job's status.
    active_dest = models.CharField(
        max_length=DEST_MAX, null=True, blank=True, unique=True, editable=False
    )
    host = models.CharField(max_length=255, db_index=True)
    expected_size = models.BigIntegerField(null=True, blank=True)
    expected_sha256 = models.CharField(max_length=64, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)  # of the verified file
    etag = models.CharField(max_length=255, blank=True)
    last_modified = models.CharField(max_length=64, blank=True)
    bytes_done = models.BigIntegerField(default=0)
    total_bytes = models.BigIntegerField(null=True, blank=True)
    speed = models.FloatField(default=0)  # bytes per second, smoothed
    eta_seconds = models.FloatField(null=True, blank=True)
    # Connections this download holds on its host while it runs (fetch.acquire_slot).
    connections = models.PositiveSmallIntegerField(default=1)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = DownloadQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.dest} ({self.job.status})"

    @property
    def source(self) -> str:
        """The source URL in use."""
        if self.source_index < len(self.sources):
            return self.sources[self.source_index]
        return self.source_url

    @property
    def mirror(self) -> str:
        """ "mirror 2 of 3 (host)" when the file has more than one source, else ""."""
        if len(self.sources) < 2:
            return ""
        return f"mirror {self.source_index + 1} of {len(self.sources)} ({self.host})"

    def add_sources(self, urls: list[str]) -> None:
        """Append the URLs not yet among this download's sources; under the row's lock, so
        two requests joining at once both land."""
        with transaction.atomic():
            row = Download.objects.select_for_update().filter(pk=self.pk)
            known = row.values_list("sources", flat=True).get() or [self.source_url]
            fresh = [url for url in urls if url not in known]
            if fresh:
                row.update(sources=[*known, *fresh])
            self.sources = [*known, *fresh]

    def use_source(self, index: int) -> None:
        """Go on from source `index`: resolved again, its own host and breaker."""
        self.source_index, self.url = index, ""
        self.host = host_of(self.sources[index])
        with transaction.atomic():
            self.save(update_fields=["source_index", "url", "host"])
            Job.objects.filter(pk=self.job_id).update(breaker_key=self.host)

    def fail_source(self, why: str) -> None:
        self.sources_failed = {**self.sources_failed, str(self.source_index): why}
        self.save(update_fields=["sources_failed"])

    @property
    def percent(self) -> int | None:
        if not self.total_bytes:
            return None
        return min(100, int(self.bytes_done * 100 / self.total_bytes))

    @property
    def path(self) -> Path:
        return models_path(self.dest, settings.MODELS_DIR)

    @property
    def part_path(self) -> Path:
        return beside(self.path, PART)

    @property
    def sidecar_path(self) -> Path:
        return beside(self.path, SIDECAR)

    @property
    def sidecar_tmp_path(self) -> Path:
        """Where the sidecar is written before it is renamed into place."""
        return beside(self.path, SIDECAR_TMP)

    @property
    def working_paths(self) -> list[Path]:
        return [beside(self.path, suffix) for suffix in WORKING_SUFFIXES]

    def report(self, done: int, total: int | None, speed: float, eta: float | None) -> None:
        self.bytes_done, self.total_bytes, self.speed, self.eta_seconds = done, total, speed, eta
        self.updated_at = timezone.now()
        self.save(update_fields=["bytes_done", "total_bytes", "speed", "eta_seconds", "updated_at"])

    def want_connections(self, count: int) -> None:
        """This download's own number of connections (`download --connections`), kept in
        its job's params so every attempt, in any process, uses it."""
        self.job.params = {**self.job.params, "connections": count}
        Job.objects.filter(pk=self.job_id).update(params=self.job.params)

    def discard_partial(self) -> None:
        """Forget the bytes so far (.part and its sidecars); never touches the destination."""
        for path in self.working_paths:
            path.unlink(missing_ok=True)

    def hold_dest(self) -> None:
        """Be the one active download of `dest` before writing a byte there, or refuse.

        A download retried after it failed or was cancelled may find a newer one saving
        the same file: the two must never write the same .part.
        """
        Download.objects.release_stale(self.real_dest)
        try:
            with transaction.atomic():
                mine = Download.objects.filter(pk=self.pk, active_dest__isnull=True)
                mine.update(active_dest=self.real_dest)
        except IntegrityError:
            raise JobError(
                f"Another download is already saving {self.dest}; this one stopped so the two "
                "never write the same file. Follow that one on the Downloads page.",
                category=Category.VALIDATION,
            ) from None

    def taken_by_another(self) -> bool:
        return Download.objects.filter(active_dest=self.real_dest).exclude(pk=self.pk).exists()

    @property
    def real_dest(self) -> str:
        return file_key(self.dest, settings.MODELS_DIR)


def with_breakers(downloads: list[Download]) -> list[Download]:
    """Set `breaker` on each download: its host's circuit breaker while not closed, else
    None (one query), so its card names the host that is down and when it is tried again."""
    shut = CircuitBreaker.objects.exclude(state=BreakerState.CLOSED)
    by_key = {breaker.key: breaker for breaker in shut}
    for download in downloads:
        download.breaker = by_key.get(download.host)
    return downloads


def follow_job(sender, job: Job, **kwargs) -> None:
    """Keep `active_dest` in step with the download's job (connected to job_changed).

    An ended job lets its destination go; a job queued again (Retry after a failure or
    a cancel) takes it back if it is free. If a newer download holds it, the retried one
    is refused when it starts (Download.hold_dest).
    """
    if job.kind != "download":
        return
    if job.status in TERMINAL:
        Download.objects.filter(job_id=job.pk, active_dest__isnull=False).update(active_dest=None)
    elif job.status == Status.QUEUED:
        # Queued again (Retry, or a restart from zero): every source gets another chance.
        Download.objects.filter(job_id=job.pk).update(sources_failed={})
        freed = Download.objects.filter(job_id=job.pk, active_dest__isnull=True).first()
        with contextlib.suppress(IntegrityError), transaction.atomic():
            if freed:
                Download.objects.filter(pk=freed.pk, active_dest__isnull=True).update(
                    active_dest=freed.real_dest
                )


class LocalModel(models.Model):
    """A file in the models folder, with its sha256 once anyone has computed it.

    Written when a download finishes (hash known for free) and by index.scan(); read to
    answer "is this model here?" by directory + name and by hash.
    """

    directory = models.CharField(max_length=200)
    name = models.CharField(max_length=300)
    size = models.BigIntegerField()
    mtime_ns = models.BigIntegerField()
    sha256 = models.CharField(max_length=64, blank=True, db_index=True)
    seen_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["directory", "name"], name="one_row_per_model_file")
        ]

    def __str__(self) -> str:
        return f"{self.directory}/{self.name}"


def finder_cutoff(now):
    return now - timedelta(seconds=settings.FINDER_CACHE_SECONDS)


class FinderAnswerQuerySet(models.QuerySet):
    def expired(self, now):
        return self.filter(fetched_at__lte=finder_cutoff(now))

    def fresh(self, url: str, now) -> "FinderAnswer | None":
        key = FinderAnswer.key_for(url)
        return self.filter(key=key, fetched_at__gt=finder_cutoff(now)).first()

    def remember(self, source: str, url: str, payload, now, next_url: str = "") -> None:
        self.update_or_create(
            key=FinderAnswer.key_for(url),
            defaults={
                "source": source,
                "url": url,
                "payload": payload,
                "next_url": next_url,
                "fetched_at": now,
            },
        )


class FinderAnswer(models.Model):
    """What a remote finder source answered to one API request, reused without network
    until it is older than FINDER_CACHE_SECONDS. `payload` is the JSON body, or null when
    the source said "not found" (a miss is an answer too)."""

    key = models.CharField(max_length=64, unique=True)  # sha256 of the URL: URLs are long
    source = models.CharField(max_length=32)
    url = models.URLField(max_length=2000)
    payload = models.JSONField(null=True, blank=True)
    next_url = models.URLField(max_length=2000, blank=True)  # the next page (a Link header)
    fetched_at = models.DateTimeField(db_index=True)

    objects = FinderAnswerQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.source}: {self.url}"

    @staticmethod
    def key_for(url: str) -> str:
        return hashlib.sha256(url.encode()).hexdigest()


class KnownModel(models.Model):
    """A model file an imported workflow or launcher.json declared: where it goes, where it
    can be downloaded and, when the file said, its sha256 and size. The finder's "known"
    source reads it (comfyhub.library.knowledge writes it)."""

    directory = models.CharField(max_length=200)
    name = models.CharField(max_length=300)  # as the workflow names it (may hold subfolders)
    url = models.URLField(max_length=2000)
    sha256 = models.CharField(max_length=64, blank=True, db_index=True)
    size = models.BigIntegerField(null=True, blank=True)
    origin = models.CharField(max_length=300)  # "workflow <file>" | "launcher <file>"
    seen_at = models.DateTimeField(default=timezone.now)

    class Meta:
        # Newest import first; within one, the file's own order (a launcher's first choice).
        ordering = ["-seen_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["directory", "name", "url"], name="one_known_model_per_link"
            )
        ]

    def __str__(self) -> str:
        return f"{self.directory}/{self.name} <- {self.url}"


class PreferenceName(models.TextChoices):
    """Settings a user may change on the Settings page without a restart, named like the
    environment variables whose defaults they replace."""

    BANDWIDTH_LIMIT = "COMFYHUB_BANDWIDTH_LIMIT", "Bandwidth limit"


class PreferenceQuerySet(models.QuerySet):
    def value_of(self, name: str) -> str | None:
        """The stored text, or None when the page never set it (the environment decides)."""
        return self.filter(name=name).values_list("value", flat=True).first()

    def store(self, name: str, value: str) -> None:
        self.update_or_create(name=name, defaults={"value": value, "updated_at": timezone.now()})


class Preference(models.Model):
    """A setting saved on the Settings page; it wins over its environment variable and is
    re-read by running workers (library.bandwidth), so no restart is needed."""

    name = models.CharField(max_length=64, choices=PreferenceName.choices, unique=True)
    value = models.CharField(max_length=64, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = PreferenceQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.name} = {self.value!r}"


class TokenName(models.TextChoices):
    """Host tokens a user may store on the Settings page, named like their env variables."""

    HF = "HF_TOKEN", "Hugging Face"
    CIVITAI = "CIVITAI_API_TOKEN", "CivitAI"


class StoredTokenQuerySet(models.QuerySet):
    def value_of(self, name: str) -> str:
        """The stored token, or "" when there is none or no key opens it."""
        token = self.filter(name=name).first()
        return (token and token.value) or ""

    def store(self, name: str, value: str) -> None:
        # Sealed inside the write transaction: on SQLite that holds the write lock, so a
        # key rotation (one transaction) reseals this row, or ran first and left its new
        # key in the file this seal reads.
        with transaction.atomic():
            defaults = {"sealed": sealing.seal(value), "updated_at": timezone.now()}
            self.update_or_create(name=name, defaults=defaults)

    def reseal(self) -> tuple[int, int]:
        """Seal every token again under the first key: (resealed, unreadable)."""
        resealed = 0
        with transaction.atomic():
            tokens = list(self.select_for_update())
            for token in tokens:
                fresh = sealing.reseal(token.sealed)
                if fresh:
                    resealed += self.filter(pk=token.pk).update(sealed=fresh)
        return resealed, len(tokens) - resealed

    def rotate_key(self) -> tuple[int, int]:
        """Seal every token under a new key, then drop the old keys: (resealed, unreadable).

        The new key is in the file before any row changes and the old ones leave only after
        the last, so every process opens every token throughout. With the keys in the
        environment the tokens are resealed under its first key; dropping the others from
        COMFYHUB_TOKEN_KEY is the user's step.
        """
        if sealing.keys_in_file():
            sealing.add_key()
        counts = self.reseal()
        if sealing.keys_in_file():
            sealing.drop_old_keys()
        return counts


class StoredToken(models.Model):
    """An access token saved on the Settings page; it wins over the environment variable
    of the same name, so a user can fix an `auth` failure without a restart.

    Sealed at rest (sealing.py): the row, a dump and the admin hold only `sealed`. Pages
    render only `mask(value)`; the token reaches the network solely as an Authorization
    header to its own host (sources.auth_headers).
    """

    name = models.CharField(max_length=32, choices=TokenName.choices, unique=True)
    sealed = models.TextField()  # the token sealed with the token key, never the token
    updated_at = models.DateTimeField(default=timezone.now)

    objects = StoredTokenQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.name} (stored)"

    @property
    def value(self) -> str | None:
        """The token, or None when no key opens it (the key that sealed it was lost)."""
        return sealing.unseal(self.sealed)


def mask(token: str) -> str:
    """`hf_…x9Q2`: enough to recognise a long token, nothing of a short one."""
    if len(token) < 12:
        return "…"
    return f"{token[:3]}…{token[-4:]}"
