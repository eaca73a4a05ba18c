"""The projects pages: list, new from a template, import, project detail and its actions.

Everything long (install, launch, check, adding a pack, rollback) is a job handed to the
worker; a view only queues it and redirects. Stop runs here: it takes at most
runtime.STOP_GRACE seconds. A GET only reads: a ComfyUI that died shows as crashed
(runtime.observed), and the worker's tick records it.
An import in progress lives in the session (server side), keyed by a random token, so
the parsed workflow is never round-tripped through the browser. The finder never runs in
a request: the import queues a search job per missing model (library.searches) and the
page shows each search's live card.
"""

import secrets

from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import (
    condition,
    require_GET,
    require_http_methods,
    require_POST,
    require_safe,
)

from comfyhub.library.models import with_breakers
from comfyhub.live.page import page_url
from comfyhub.projects import fixes, install, jobs, runtime
from comfyhub.projects.export import launcher_json
from comfyhub.projects.forms import (
    ChosenModelForm,
    DeleteForm,
    DownloadAgainForm,
    GalleryForm,
    ImportForm,
    NewProjectForm,
    ResolveForm,
    RollbackForm,
)
from comfyhub.projects.models import Project, ProjectStatus
from comfyhub.workflows import catalog
from recovery.models import Job, Status

PER_PAGE = 48
IMPORTS = "project_imports"
KEEP_IMPORTS = 3  # imports a session holds at once (each may be a large workflow)
LOGS = ("install", "comfyui")
FOR_GOOD = "public, max-age=31536000, immutable"  # the URL names the file's version
ASK_AGAIN = "public, no-cache"  # no version in the URL: revalidate by ETag


def project_or_404(slug: str) -> Project:
    return runtime.observed(
        get_object_or_404(Project.objects.select_related("install_job"), slug=slug)
    )


def card(project: Project) -> dict:
    """What a project's card shows: its install job with steps, and its latest launch."""
    launch = project.latest_job("project_launch")
    return {
        "project": project,
        "status": ProjectStatus(project.status),
        "cancelled": project.cancelled_models(),
        "job": project.install_job,
        "steps": jobs.install_steps(project.install_job),
        "launch": launch,
        "launching": bool(launch and not launch.is_terminal),
    }


def back(request: HttpRequest, project: Project) -> HttpResponse:
    """To the page the form was on (`next`), else the project's page."""
    target = request.POST.get("next", "")
    if url_has_allowed_host_and_scheme(target, {request.get_host()}):
        return redirect(target)
    return redirect("project", slug=project.slug)


def start(name: str, spec: dict, skipped: list[str] | None = None) -> Project:
    """Create the project and hand its install job to the worker."""
    project = install.create(name, spec, skipped=skipped)
    project.install_job.dispatch()
    return project


def problem(request: HttpRequest, project: Project, message: str) -> HttpResponse:
    context = {"project": project, "message": message}
    return render(request, "projects/problem.html", context, status=400)


@require_GET
def projects(request: HttpRequest) -> HttpResponse:
    listed = Project.objects.select_related("install_job")
    cards = [card(runtime.observed(project)) for project in listed]
    jobs = [c["launch"] if c["project"].installed else c["job"] for c in cards]
    # The run panels' forms come back here; the cards the socket sends too.
    live = page_url(unfinished(*jobs), projects=[c["project"].pk for c in cards], next="/")
    return render(request, "projects/list.html", {"cards": cards, "live": live})


@require_http_methods(["GET", "POST"])
def new(request: HttpRequest) -> HttpResponse:
    form = NewProjectForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        project = start(form.cleaned_data["name"], form.cleaned_data["template"])
        return redirect("project", slug=project.slug)
    gallery = GalleryForm(request.GET)
    results = gallery.results() if gallery.is_valid() else []
    page = Paginator(results, PER_PAGE).get_page(request.GET.get("page"))
    chosen = catalog.by_name().get(request.POST.get("template", ""))
    context = {"gallery": gallery, "page": page, "form": form, "chosen": chosen}
    template = "projects/_gallery.html" if request.htmx else "projects/new.html"
    failed = request.method == "POST" or not gallery.is_valid()
    return render(request, template, context, status=400 if failed else 200)


def picture_etag(request: HttpRequest, name: str) -> str | None:
    found = catalog.pictures().get(name)
    return f'"{found.version}"' if found else None


@require_safe
@condition(etag_func=picture_etag)
def template_picture(request: HttpRequest, name: str) -> FileResponse:
    """A template's picture from the installed media bundles (only files the catalog
    found there for a template it lists; a 304 when the browser's ETag still matches)."""
    found = catalog.pictures().get(name)
    if found is None:
        raise Http404(f"No picture for the template {name!r}.")
    try:
        opened = found.path.open("rb")
    except FileNotFoundError:
        # A media bundle was removed or upgraded while the server ran: look again next time.
        catalog.pictures.cache_clear()
        raise Http404(f"The picture of {name!r} is no longer installed.") from None
    response = FileResponse(opened, content_type=found.content_type)
    response["Cache-Control"] = FOR_GOOD if request.GET.get("v") == found.version else ASK_AGAIN
    return response


@require_http_methods(["GET", "POST"])
def import_workflow(request: HttpRequest) -> HttpResponse:
    posted = request.method == "POST"
    form = ImportForm(request.POST if posted else None, request.FILES if posted else None)
    if posted and form.is_valid():
        form.learn()
        return redirect("project-import-confirm", token=remember_import(request, form.state()))
    return render(request, "projects/import.html", {"form": form}, status=400 if posted else 200)


def remember_import(request: HttpRequest, state: dict) -> str:
    token = secrets.token_urlsafe(12)
    kept = list(request.session.get(IMPORTS, {}).items())[-(KEEP_IMPORTS - 1) :]
    request.session[IMPORTS] = {**dict(kept), token: state}
    return token


def import_or_404(request: HttpRequest, token: str) -> dict:
    state = request.session.get(IMPORTS, {}).get(token)
    if state is None or "searches" not in state:  # gone, or kept by an older version
        raise Http404("This import is no longer here; start again from Import.")
    return state


@require_http_methods(["GET", "POST"])
def import_confirm(request: HttpRequest, token: str) -> HttpResponse:
    state = import_or_404(request, token)
    data = request.POST if request.method == "POST" else None
    packs = state["requirements"]["custom_nodes"]
    form = ResolveForm(
        state["missing"], state["searches"], data, initial={"name": state["name"]}, packs=packs
    )
    if data is not None and form.is_valid():
        spec, skipped = form.spec(state)
        project = start(form.cleaned_data["name"], spec, skipped)
        request.session[IMPORTS] = {k: v for k, v in request.session[IMPORTS].items() if k != token}
        return redirect("project", slug=project.slug)
    # The searches the form drew unfinished, from the rows it drew them from: a second
    # query could see one finish after it was drawn "Searching…", and never watch it.
    live = page_url(pk for _, pk, job in form.models if job and not job.is_terminal)
    context = {"form": form, "state": state, "token": token, "live": live}
    return render(
        request, "projects/requirements.html", context, status=200 if data is None else 400
    )


@require_GET
def project(request: HttpRequest, slug: str) -> HttpResponse:
    return detail(request, project_or_404(slug))


def detail(request: HttpRequest, project: Project, status: int = 200, **forms) -> HttpResponse:
    context = {
        **card(project),
        "models": project.model_rows(),
        "rollback": project.latest_job("project_rollback"),
        "rollback_form": forms.get("rollback_form") or RollbackForm(project),
        "delete_form": forms.get("delete_form") or DeleteForm(),
        "logs": {which: project.log_tail(which) for which in LOGS},
        "live_checks": live_checks(project),
        "uncheckable": project.why_not_checkable(),
        "picture": catalog.pictures().get(project.spec.get("template", "")),
    }
    downloads = with_breakers([m["download"] for m in context["models"] if m["download"]])
    jobs = [context["job"], context["launch"], context["rollback"], *context["live_checks"]]
    live = unfinished(*jobs, *(download.job for download in downloads))
    context["live"] = page_url(live, projects=[project.pk])
    return render(request, "projects/detail.html", context, status=status)


def unfinished(*jobs: Job | None) -> list[int]:
    """The jobs whose cards the page socket keeps live."""
    return [job.pk for job in jobs if job and not job.is_terminal]


def live_checks(project: Project) -> list:
    """The newest check and pack addition, while under way or when they failed (a
    success shows in the findings)."""
    kinds = ("project_check", "project_add_node", "project_fix_pack", "project_fix")
    newest = [project.latest_job(kind) for kind in kinds]
    return [job for job in newest if job and job.status != Status.SUCCEEDED]


@require_POST
def launch(request: HttpRequest, slug: str) -> HttpResponse:
    project = project_or_404(slug)
    if not project.installed:
        return problem(
            request,
            project,
            f"{project.name} cannot start: it is not installed "
            f"({project.get_status_display().lower()}). Wait for the install to finish, "
            f"or retry it if it failed.",
        )
    jobs.queue_launch(project)
    return back(request, project)


@require_POST
def check_again(request: HttpRequest, slug: str) -> HttpResponse:
    """Ask ComfyUI again what it sees (a job: it may start ComfyUI for it); with `relink`,
    point it at the models folder again first."""
    project = project_or_404(slug)
    if why := project.why_not_checkable():
        return problem(request, project, why)
    relink = {"relink": True} if request.POST.get("relink") else {}
    # A check under way that does not relink would swallow the request: a relinking one
    # is queued after it (it waits its turn, runtime_turn).
    project.queue_job("project_check", matching=relink, **relink)
    return back(request, project)


@require_POST
def add_node(request: HttpRequest, slug: str) -> HttpResponse:
    """Install the pack the last check named for a node type ComfyUI missed."""
    project = project_or_404(slug)
    node_type = request.POST.get("node_type", "")
    repository = project.provider(node_type)
    if not repository:
        return problem(
            request, project, f"No pack to install for {node_type!r}: check again first."
        )
    if why := project.why_not_checkable():
        return problem(request, project, why)
    project.queue_job("project_add_node", repository=repository)
    return back(request, project)


@require_POST
def fix_pack(request: HttpRequest, slug: str) -> HttpResponse:
    """Reinstall the requirements of a pack the last check saw fail to import."""
    project = project_or_404(slug)
    name = request.POST.get("pack", "")
    if name not in {pack["name"] for pack in project.failed_packs() if pack["here"]}:
        return problem(
            request, project, f"The last check saw no failed pack named {name!r}: check again."
        )
    if why := project.why_not_checkable():
        return problem(request, project, why)
    project.queue_job("project_fix_pack", matching={"pack": name}, pack=name)
    return back(request, project)


@require_POST
def fix(request: HttpRequest, slug: str) -> HttpResponse:
    """Apply the fixes of the last check that need no choice ("Fix all"), or the one
    named by `kind` and `target`; an install that stopped is run again first."""
    project = project_or_404(slug)
    if project.install_job and not project.install_job.is_terminal:
        return problem(request, project, project.why_not_checkable())
    only = {key: request.POST.get(key, "") for key in ("kind", "target", "commit")}
    if only["kind"] == "go_without" and only["target"] in project.file_keys():
        project.leave_out([only["target"]])
        only = None  # then the install goes on, and ComfyUI is asked again
    elif only["kind"] and not fixes.chosen(project, only):
        return problem(request, project, "The last check offers no such fix: check again.")
    project.finish_install()
    only = only if only and only["kind"] else None
    project.queue_job("project_fix", matching={"only": only}, only=only)
    return back(request, project)


@require_POST
def stop(request: HttpRequest, slug: str) -> HttpResponse:
    project = project_or_404(slug)
    runtime.stop(project)
    return back(request, project)


@require_POST
def retry(request: HttpRequest, slug: str) -> HttpResponse:
    project = project_or_404(slug)
    project.retry_install()  # no-op if it is already running again: a double click
    return back(request, project)


@require_POST
def download_model(request: HttpRequest, slug: str) -> HttpResponse:
    """Download a model again (its download was cancelled); the install goes on."""
    return choose_model(request, slug, DownloadAgainForm, Project.download_again)


@require_POST
def skip_model(request: HttpRequest, slug: str) -> HttpResponse:
    """Go without a model; the install goes on."""
    return choose_model(request, slug, ChosenModelForm, Project.go_without)


def choose_model(request: HttpRequest, slug: str, form_class, choice) -> HttpResponse:
    """The user's way forward for one model of the spec: `choice(project, model)`."""
    project = project_or_404(slug)
    form = form_class(project, request.POST)
    if not form.is_valid():
        return problem(request, project, " ".join(form.errors["model"]))
    choice(project, form.cleaned_data["model"])
    return back(request, project)


@require_POST
def rollback(request: HttpRequest, slug: str) -> HttpResponse:
    project = project_or_404(slug)
    form = RollbackForm(project, request.POST)
    if not form.is_valid():
        return detail(request, project, status=400, rollback_form=form)
    jobs.queue_rollback(project, form.cleaned_data["point"])
    return redirect("project", slug=project.slug)


@require_POST
def delete(request: HttpRequest, slug: str) -> HttpResponse:
    project = project_or_404(slug)
    form = DeleteForm(request.POST)
    if not form.is_valid():
        return detail(request, project, status=400, delete_form=form)
    if project.install_job:
        project.install_job.cancel()  # a running install stops at its next step
    runtime.delete(project)
    return redirect("projects")


@require_GET
def export(request: HttpRequest, slug: str) -> JsonResponse:
    project = project_or_404(slug)
    response = JsonResponse(launcher_json(project), json_dumps_params={"indent": 2})
    response["Content-Disposition"] = f'attachment; filename="{project.slug}.launcher.json"'
    return response


@require_GET
def log(request: HttpRequest, slug: str) -> HttpResponse:
    project = project_or_404(slug)
    which = request.GET.get("log", "")
    if which not in LOGS:
        return HttpResponse(
            f"Unknown log {which!r}: ask for ?log=install or ?log=comfyui.",
            status=400,
            content_type="text/plain",
        )
    context = {"text": project.log_tail(which), "which": which}
    return render(request, "projects/_log.html", context)
