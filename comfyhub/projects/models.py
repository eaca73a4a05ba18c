from pathlib import Path

from django.conf import settings
from django.db import models, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.text import slugify

from comfyhub.library import index
from comfyhub.library.models import Download
from recovery.models import TERMINAL, Job

LOG_TAIL_BYTES = 64 * 1024


class ProjectStatus(models.TextChoices):
    INSTALLING = "installing", "Installing"
    READY = "ready", "Ready"
    FAILED = "failed", "Install failed"


class RunState(models.TextChoices):
    STOPPED = "stopped", "Stopped"
    STARTING = "starting", "Starting"
    RUNNING = "running", "Running"
    CRASHED = "crashed", "Crashed"


# Slugs that would collide with the pages under /projects/.
RESERVED_SLUGS = frozenset({"new", "import"})


def unique_slug(name: str) -> str:
    base = slugify(name)[:50] or "project"
    slug, n = base, 2
    while slug in RESERVED_SLUGS or Project.objects.filter(slug=slug).exists():
        slug, n = f"{base}-{n}", n + 1
    return slug


class Project(models.Model):
    """One isolated ComfyUI: its checkout, venv, custom nodes and port; models are shared.

    `spec` is what the project should be: {"comfyui": {"repository", "commit"},
    "nodes": [{"repository", "commit", "name"}], "models": [{"directory", "name", "url",
    "sha256", "size"}], "workflow": {...} | None, "workflow_name": str}. The pins actually
    installed are recorded in comfyui_commit / node_pins.
    """

    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=60, unique=True)
    status = models.CharField(
        max_length=16, choices=ProjectStatus.choices, default=ProjectStatus.INSTALLING
    )
    spec = models.JSONField(default=dict)
    comfyui_commit = models.CharField(max_length=40, blank=True)
    node_pins = models.JSONField(default=list, blank=True)
    models_skipped = models.JSONField(default=list, blank=True)  # "dir/name" the user let go
    install_job = models.ForeignKey(
        Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    port = models.PositiveIntegerField(null=True, blank=True, unique=True)
    run_state = models.CharField(max_length=16, choices=RunState.choices, default=RunState.STOPPED)
    pid = models.PositiveIntegerField(null=True, blank=True)
    extra_args = models.JSONField(default=list, blank=True)
    auto_restart = models.BooleanField(default=False)
    restarts = models.PositiveIntegerField(default=0)
    run_message = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name

    @property
    def folder(self) -> Path:
        return settings.PROJECTS_DIR.resolve() / self.slug

    @property
    def comfyui_dir(self) -> Path:
        return self.folder / "ComfyUI"

    @property
    def venv(self) -> Path:
        return self.folder / "venv"

    @property
    def log_dir(self) -> Path:
        path = self.folder / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def install_log(self) -> Path:
        return self.log_dir / "install.log"

    @property
    def run_log(self) -> Path:
        return self.log_dir / "comfyui.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/" if self.port else ""

    def required_models(self) -> list[dict]:
        skipped = set(self.models_skipped)
        return [m for m in self.spec.get("models", []) if model_key(m) not in skipped]

    def log_path(self, which: str) -> Path:
        """The "install" or "comfyui" log; KeyError for anything else (no path from a request)."""
        return self.folder / "logs" / {"install": "install.log", "comfyui": "comfyui.log"}[which]

    def log_tail(self, which: str, lines: int = 100) -> str:
        """The last `lines` lines of a log, reading only its end (logs grow large)."""
        path = self.log_path(which)
        if not path.is_file():
            return ""
        with path.open("rb") as log:
            log.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
            text = log.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def model_rows(self) -> list[dict]:
        """Each model of the spec: present, skipped (on purpose) or neither, and its newest
        download if there is one."""
        models = self.spec.get("models", [])
        downloads = newest_downloads([model_key(m) for m in models])
        return [
            {
                "key": model_key(m),
                "skipped": model_key(m) in self.models_skipped,
                "present": index.is_present(m["directory"], m["name"], m.get("sha256") or ""),
                "download": downloads.get(model_key(m)),
            }
            for m in models
        ]

    def latest_job(self, kind: str) -> Job | None:
        """The newest job of `kind` (e.g. project_launch) that names this project."""
        return Job.objects.filter(kind=kind, params__project=self.pk).first()

    def active_job(self, kind: str) -> Job | None:
        """The unfinished job of `kind` for this project, if any."""
        mine = Job.objects.filter(kind=kind, params__project=self.pk)
        return mine.exclude(status__in=TERMINAL).first()

    def queue_job(self, kind: str, dispatch: bool = True, **params) -> Job:
        """The job of `kind` under way for this project, else a new one (handed to the
        worker unless `dispatch` is False). Never two at once: the look and the insert
        happen under the project row's lock."""
        with transaction.atomic():
            Project.objects.select_for_update().filter(pk=self.pk).first()
            job = self.active_job(kind)
            if job is None:
                job = Job.objects.create(kind=kind, params={"project": self.pk, **params})
                if dispatch:
                    job.dispatch()
        return job

    def claim_restart(self, now) -> bool:
        """Compare-and-set: of the worker ticks that see this crash, one counts a restart."""
        crashed = Project.objects.filter(
            pk=self.pk, run_state=RunState.CRASHED, restarts=self.restarts
        )
        return bool(crashed.update(restarts=F("restarts") + 1, updated_at=now))

    def retry_install(self) -> bool:
        """Run the install again from where it stopped (a pruned job: from the start)."""
        if self.install_job is None:
            job = Job.objects.create(kind="project_install", params={"project": self.pk})
            self.touch(install_job=job)
            job.dispatch()
            return True
        return self.install_job.retry_now()

    def touch(self, **fields) -> None:
        fields["updated_at"] = timezone.now()
        for name, value in fields.items():
            setattr(self, name, value)
        self.save(update_fields=list(fields))


def model_key(model: dict) -> str:
    return f"{model['directory']}/{model['name']}"


def newest_downloads(dests: list[str]) -> dict[str, Download]:
    found = Download.objects.filter(dest__in=dests).select_related("job").order_by("id")
    return {download.dest: download for download in found}


class RestorePoint(models.Model):
    """What a project was before a change: enough to put it back (rollback)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="restore_points")
    reason = models.CharField(max_length=200)
    comfyui_commit = models.CharField(max_length=40)
    node_pins = models.JSONField(default=list)
    pip_freeze = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.project} before {self.reason}"


def follow_install_job(sender, job: Job, **kwargs) -> None:
    """A project's status follows its install job: ready or failed with it, installing
    while it runs (again)."""
    if job.kind != "project_install":
        return
    projects = Project.objects.filter(install_job=job)
    if job.status == "succeeded":
        projects.update(status=ProjectStatus.READY, updated_at=timezone.now())
    elif job.status == "failed":
        projects.update(status=ProjectStatus.FAILED, updated_at=timezone.now())
    elif job.status in ("queued", "running", "waiting"):
        projects.exclude(status=ProjectStatus.INSTALLING).update(
            status=ProjectStatus.INSTALLING, updated_at=timezone.now()
        )
