from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import models, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.text import slugify

from comfyhub.library import index
from comfyhub.library.models import Download
from recovery.errors import JobError
from recovery.models import TERMINAL, Category, Job, Status

LOG_TAIL_BYTES = 64 * 1024
MAX_NAME = 100  # characters of a project name (its workflow file is named after it)


class ProjectStatus(models.TextChoices):
    INSTALLING = "installing", "Installing"
    READY = "ready", "Ready"
    ATTENTION = "attention", "Needs attention"  # installed; ComfyUI misses something
    FAILED = "failed", "Install failed"


# Installed: ComfyUI can run (with one broken pack, a project still runs).
INSTALLED = (ProjectStatus.READY, ProjectStatus.ATTENTION)


class RunState(models.TextChoices):
    STOPPED = "stopped", "Stopped"
    STARTING = "starting", "Starting"
    RUNNING = "running", "Running"
    CRASHED = "crashed", "Crashed"


# What a project is while its install job is in each state (a succeeded one: READY or
# ATTENTION, as its last step, the check, found; see install_status). The page's live badge
# reads it from the job, whose row is written before the project's follows it.
INSTALL_STATUS = {
    Status.QUEUED: ProjectStatus.INSTALLING,
    Status.RUNNING: ProjectStatus.INSTALLING,
    Status.WAITING: ProjectStatus.INSTALLING,
    Status.PAUSED: ProjectStatus.INSTALLING,
    Status.SUCCEEDED: ProjectStatus.READY,
    Status.FAILED: ProjectStatus.FAILED,
    Status.CANCELLED: ProjectStatus.FAILED,
}

# The jobs that start or stop a project's ComfyUI: one at a time per project, the oldest
# first (Project.older_runtime_job). A paused one holds nothing.
RUNTIME_KINDS = (
    "project_launch",
    "project_check",
    "project_add_node",
    "project_fix_pack",
    "project_fix",
    "project_rollback",
)
UNDER_WAY = (Status.QUEUED, Status.RUNNING, Status.WAITING)

# Slugs that would collide with the pages under /projects/.
RESERVED_SLUGS = frozenset({"new", "import"})


def check_name(name: str) -> str:
    """A project name as given, trimmed; JobError (validation) when empty or too long."""
    name = name.strip()
    if not name:
        raise JobError("A project needs a name.", category=Category.VALIDATION)
    if len(name) > MAX_NAME:
        raise JobError(
            f"A project name is at most {MAX_NAME} characters (this one has {len(name)}).",
            category=Category.VALIDATION,
        )
    return name


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
    "sha256", "size", "sources"}], "files": [{"path": "input/NAME", "url", "sha256",
    "size", "sources"}], "workflow": {...} | None, "workflow_name": str, "template": the
    official template's name, only for a project made from one}. The pins actually
    installed are recorded in comfyui_commit / node_pins.

    `last_check` is what its ComfyUI saw when last asked (comfyhub.projects.check): {"ok",
    "node_types_missing", "models_missing", "packs_failed", "environment", "providers",
    "failure_lines": {pack: its log lines}, "checked_at"}, {} before.
    `run_log_start` is where the current run's lines begin in its ComfyUI log.
    """

    name = models.CharField(max_length=MAX_NAME)
    slug = models.SlugField(max_length=60, unique=True)
    status = models.CharField(
        max_length=16, choices=ProjectStatus.choices, default=ProjectStatus.INSTALLING
    )
    spec = models.JSONField(default=dict)
    comfyui_commit = models.CharField(max_length=40, blank=True)
    node_pins = models.JSONField(default=list, blank=True)
    # The cut-off ComfyUI's requirements were resolved under (envs.as_of_for), as uv takes
    # it (2026-01-08T21:47:02Z); "" = none, the latest packages. A rollback sets the
    # restore point's.
    resolved_as_of = models.CharField(max_length=20, blank=True)
    # Models ("dir/name") and input files ("input/NAME") the user chose to go without.
    models_skipped = models.JSONField(default=list, blank=True)
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
    run_log_start = models.PositiveBigIntegerField(default=0)
    # Not "check": Django's Model.check() (system checks) owns that name.
    last_check = models.JSONField(default=dict, blank=True)
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

    @property
    def installed(self) -> bool:
        return self.status in INSTALLED

    def checked_status(self) -> str:
        """READY, or ATTENTION when the last check found problems."""
        if self.last_check and not self.last_check.get("ok"):
            return ProjectStatus.ATTENTION
        return ProjectStatus.READY

    def older_runtime_job(self, job: Job) -> Job | None:
        """A job that starts or stops this project's ComfyUI (RUNTIME_KINDS), queued before
        `job` and not finished: `job` waits for it, so two never boot one port at once."""
        mine = Job.objects.filter(kind__in=RUNTIME_KINDS, params__project=self.pk)
        return mine.filter(pk__lt=job.pk, status__in=UNDER_WAY).order_by("pk").first()

    def why_not_checkable(self) -> str:
        """Why its ComfyUI cannot be asked now, in plain words ("" when it can)."""
        if self.install_job and not self.install_job.is_terminal:
            return f"{self.name} is being installed; the install ends by asking ComfyUI."
        if not (self.comfyui_dir / "main.py").is_file() or not (self.venv / "bin").is_dir():
            return f"{self.name} has no ComfyUI installed yet; install it first."
        return ""

    def provider(self, node_type: str) -> str:
        """The pack the last check named for a node type ComfyUI missed ("" if none)."""
        if node_type not in self.last_check.get("node_types_missing", []):
            return ""
        return self.last_check.get("providers", {}).get(node_type, "")

    def missing_nodes(self) -> list[dict]:
        """Each node type the last check found missing, with the pack that provides it and
        whether that pack is installed already (then it failed to load: no install helps)."""
        pinned = {pin["repository"].lower() for pin in self.node_pins if pin.get("repository")}
        missing = self.last_check.get("node_types_missing", [])
        rows = [{"type": t, "repository": self.provider(t)} for t in missing]
        pins = [fix for fix in self.fixes() if fix["kind"] == "pin_pack"]
        return [
            {
                **row,
                "installed": row["repository"].lower() in pinned,
                "pins": [fix for fix in pins if row["type"] in fix.get("types", [])],
            }
            for row in rows
        ]

    def failed_packs(self) -> list[dict]:
        """Each pack the last check found failed, with the log lines of its failure ("" when
        it left none: a pack the install left out)."""
        lines = self.last_check.get("failure_lines", {})
        failed = self.last_check.get("packs_failed", [])
        return [
            {**pack, "lines": lines.get(pack["name"], ""), "here": self.has_pack(pack["name"])}
            for pack in failed
        ]

    def has_pack(self, name: str) -> bool:
        """A folder of that plain name in custom_nodes (a pack ComfyUI tried to import)."""
        plain = name and "/" not in name and "\\" not in name and not name.startswith(".")
        return bool(plain) and (self.comfyui_dir / "custom_nodes" / name).is_dir()

    def pack_folder(self, name: str) -> Path:
        if not self.has_pack(name):
            raise JobError(
                f"{name!r} is not a pack folder of this project's ComfyUI any more; check again.",
                category=Category.VALIDATION,
            )
        return self.comfyui_dir / "custom_nodes" / name

    def fixes(self) -> list[dict]:
        """The fixes the last check offered (comfyhub.projects.fixes)."""
        return self.last_check.get("fixes", [])

    def auto_fixes(self) -> list[dict]:
        """Those that need no choice: what "Fix all" applies."""
        return [fix for fix in self.fixes() if fix.get("auto")]

    def finish_install(self) -> bool:
        """Run an install that stopped (failed or cancelled) again; False when it ended
        well, is under way, or was pruned from an installed project (a new install would
        clone ComfyUI over the user's files)."""
        job = self.install_job
        if job is None:
            return not self.installed and self.retry_install()
        return job.status in (Status.FAILED, Status.CANCELLED) and job.retry_now()

    def leave_out(self, keys: list[str]) -> None:
        """Record models ("DIR/NAME") and input files ("input/NAME") as left out on purpose
        (models_skipped), under the row's lock: two choices made at once both land."""
        with transaction.atomic():
            mine = Project.objects.select_for_update().filter(pk=self.pk)
            skipped = mine.values_list("models_skipped", flat=True).get()
            fresh = [key for key in keys if key not in skipped]
            if fresh:
                self.touch(models_skipped=[*skipped, *fresh])

    def file_keys(self) -> set[str]:
        """What may be left out: every model ("DIR/NAME") and input file of the spec."""
        keys = {model_key(m) for m in self.spec.get("models", [])}
        return keys | {f["path"] for f in self.spec.get("files", [])}

    def unseen_models(self) -> list[dict]:
        """Each model the last check found ComfyUI cannot see, with what helps: the file is
        in the models folder (`present`: ComfyUI is pointed at it again) or not, and whether
        a download link is known."""
        wanted = {model_key(m): m for m in self.spec.get("models", [])}
        rows = []
        for key in self.last_check.get("models_missing", []):
            model = wanted.get(key, {})
            found = bool(model) and present(model)
            rows.append({"key": key, "present": found, "url": model.get("url", "")})
        return rows

    @property
    def checked_at(self) -> datetime | None:
        return parse_datetime(self.last_check.get("checked_at") or "")

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
        """Each model of the spec: present, skipped (on purpose) or neither, its newest
        download if there is one, and whether the user must choose how to go on."""
        models = self.spec.get("models", [])
        downloads = newest_downloads([model_key(m) for m in models])
        return [model_row(m, downloads.get(model_key(m)), self.models_skipped) for m in models]

    def cancelled_models(self) -> list[str]:
        """Needed models, not in the models folder, whose newest download was cancelled:
        the install waits for the user to download each again or go without it."""
        wanted = {model_key(m): m for m in self.required_models()}
        newest = newest_downloads(list(wanted))
        return [
            key
            for key, download in newest.items()
            if download.job.status == Status.CANCELLED and not present(wanted[key])
        ]

    def go_without(self, model: dict) -> None:
        """Leave `model` (a spec entry) out (the user chose to), then let the install go on."""
        self.leave_out([model_key(model)])
        self.retry_install()

    def download_again(self, model: dict) -> Download:
        """A new download of a model of the spec (one already under way is joined), then
        the install goes on."""
        urls = sources_of(model)
        sha256, size = model.get("sha256") or "", model.get("size")
        download, _ = Download.objects.queue(
            urls[0], model_key(model), sha256, size, sources=urls[1:]
        )
        self.retry_install()
        return download

    def latest_job(self, kind: str) -> Job | None:
        """The newest job of `kind` (e.g. project_launch) that names this project."""
        return Job.objects.filter(kind=kind, params__project=self.pk).first()

    def active_job(self, kind: str) -> Job | None:
        """The unfinished job of `kind` for this project, if any."""
        mine = Job.objects.filter(kind=kind, params__project=self.pk)
        return mine.exclude(status__in=TERMINAL).first()

    def queue_job(
        self, kind: str, dispatch: bool = True, matching: dict | None = None, **params
    ) -> Job:
        """The job of `kind` under way for this project (one whose params include
        `matching`, if given), else a new one (handed to the worker unless `dispatch` is
        False). Never two alike at once: the look and the insert happen under the project
        row's lock."""
        with transaction.atomic():
            Project.objects.select_for_update().filter(pk=self.pk).first()
            mine = Job.objects.filter(kind=kind, params__project=self.pk)
            alike = mine.filter(**{f"params__{k}": v for k, v in (matching or {}).items()})
            job = alike.exclude(status__in=TERMINAL).first()
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


def present(model: dict) -> bool:
    return index.is_present(model["directory"], model["name"], model.get("sha256") or "")


def model_row(model: dict, download: Download | None, skipped: list[str]) -> dict:
    """A model as the project page lists it. `choose`: the install cannot get it on its
    own (its download was cancelled or failed, or no link is known), so the page offers
    the ways forward."""
    status = download.job.status if download else None
    row = {
        "key": model_key(model),
        "url": model.get("url") or "",
        "skipped": model_key(model) in skipped,
        "present": present(model),
        "download": download,
        "cancelled": status == Status.CANCELLED,
    }
    stuck = status in (Status.CANCELLED, Status.FAILED) or not (download or row["url"])
    row["choose"] = stuck and not (row["present"] or row["skipped"])
    return row


def node_key(node: dict) -> str:
    """A pack's identity in a spec, in node_pins, in the install's checkpoint and on the
    import page: its repository, or its registry id for a pack known only by that."""
    return node.get("repository") or "cnr:" + (node.get("cnr_id") or "")


def model_key(model: dict) -> str:
    return f"{model['directory']}/{model['name']}"


def sources_of(entry: dict) -> list[str]:
    """Every URL to try for a spec's model or input file, in order: `url` first (a link the
    user chose replaces it), then the launcher's other `sources`."""
    return [url for url in dict.fromkeys([entry.get("url"), *entry.get("sources", [])]) if url]


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
    # The cut-off under which every package of pip_freeze resolves (restore.take); a
    # rollback syncs under it. "" = none.
    resolved_as_of = models.CharField(max_length=20, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.project} before {self.reason}"


def install_status(job: Job, project: Project | None) -> str:
    """What a project is while its install `job` is in its state (INSTALL_STATUS); a
    finished install is READY or ATTENTION as its check found."""
    status = INSTALL_STATUS[job.status]
    if status == ProjectStatus.READY and project is not None:
        return project.checked_status()
    return status


def follow_install_job(sender, job: Job, **kwargs) -> None:
    """A project's status follows its install job (install_status): a cancelled install
    never leaves it "installing"."""
    if job.kind != "project_install":
        return
    for project in Project.objects.filter(install_job=job):
        status = install_status(job, project)
        mine = Project.objects.filter(pk=project.pk).exclude(status=status)
        mine.update(status=status, updated_at=timezone.now())
