"""Forms of the projects pages; each clean_* returns a domain value (a spec, a workflow)."""

from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

import httpx
from django import forms

from comfyhub.library import finder, index, knowledge, searches
from comfyhub.library.paths import BadInput, check_url
from comfyhub.projects import specs
from comfyhub.projects.models import MAX_NAME, RestorePoint, model_key, node_key
from comfyhub.workflows import catalog, parse
from comfyhub.workflows.analyze import analyze
from recovery.errors import JobError
from recovery.models import Job

FETCH_TIMEOUT = 20.0


def checked(func, *args):
    """`func(*args)`, with its JobError / BadInput as the form error it means."""
    try:
        return func(*args)
    except JobError as exc:
        raise forms.ValidationError(exc.message) from None
    except BadInput as exc:
        raise forms.ValidationError(str(exc)) from None


# --- New: the official template gallery -----------------------------------------------


class GalleryForm(forms.Form):
    q = forms.CharField(required=False, max_length=200, label="Search templates")
    category = forms.ChoiceField(required=False, label="Category")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        titles = [group.title for group in catalog.catalog()]
        self.fields["category"].choices = [("", "All categories"), *((t, t) for t in titles)]

    def results(self) -> list[catalog.Template]:
        """Templates of the chosen category whose name, title, description or tags hold
        every word searched for."""
        words = self.cleaned_data["q"].lower().split()
        category = self.cleaned_data["category"]
        return [
            template
            for group in catalog.catalog()
            if category in ("", group.title)
            for template in group.templates
            if all(word in searchable(template) for word in words)
        ]


def searchable(template: catalog.Template) -> str:
    return " ".join((template.name, template.title, template.description, *template.tags)).lower()


def name_field() -> forms.CharField:
    """A project's name: refused at once when too long (its install would fail late)."""
    too_long = f"A project name is at most {MAX_NAME} characters (this one has %(show_value)d)."
    return forms.CharField(
        max_length=MAX_NAME, label="Project name", error_messages={"max_length": too_long}
    )


class NewProjectForm(forms.Form):
    template = forms.CharField(max_length=200)
    name = name_field()

    def clean_template(self) -> dict:
        """The project spec the template makes."""
        return checked(specs.from_template, self.cleaned_data["template"])


# --- Import: a workflow from a file, pasted text or a link ------------------------------


class ImportForm(forms.Form):
    file = forms.FileField(
        required=False,
        label="Upload a workflow file",
        widget=forms.ClearableFileInput(attrs={"accept": ".json,application/json"}),
    )
    text = forms.CharField(
        required=False,
        label="Or paste its JSON",
        widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false"}),
        help_text="Up to 2.5 MB pasted; upload bigger files.",
    )
    url = forms.CharField(
        required=False,
        max_length=2000,
        label="Or give a link to it",
        widget=forms.URLInput(attrs={"placeholder": "https://…/workflow.json"}),
    )

    def clean_file(self) -> object:
        upload = self.cleaned_data["file"]
        if upload is None:
            return None
        if upload.size > parse.MAX_BYTES:
            raise forms.ValidationError(
                f"{upload.name} is larger than {parse.MAX_BYTES // 2**20} MB; no workflow is."
            )
        return checked(parse.loads, upload.read())

    def clean_text(self) -> object:
        text = self.cleaned_data["text"]
        return checked(parse.loads, text) if text.strip() else None

    def clean_url(self) -> object:
        url = self.cleaned_data["url"].strip()
        return checked(parse.loads, fetch(url)) if url else None

    def clean(self) -> dict:
        given = [self.cleaned_data.get(f) for f in ("file", "text", "url")]
        if self.errors:
            return self.cleaned_data
        if sum(value is not None for value in given) != 1:
            raise forms.ValidationError(
                "Give one workflow: upload a file, paste its JSON or give a link."
            )
        workflow = next(value for value in given if value is not None)
        self.cleaned_data["workflow"] = workflow
        self.cleaned_data["requirements"] = checked(lambda: analyze(parse.from_json(workflow)))
        return self.cleaned_data

    def default_name(self) -> str:
        """The file's (or link's) name, or the launcher.json's own."""
        workflow = self.cleaned_data["workflow"]
        if workflow.get("workflow_json") and isinstance(workflow.get("name"), str):
            return workflow["name"][:100]
        upload, url = self.cleaned_data.get("file"), self.data.get("url", "")
        named = self.files["file"].name if upload is not None else unquote(urlsplit(url).path)
        return PurePosixPath(named or "").stem[:100] or "Imported workflow"

    def learn(self) -> int:
        """Teach the finder the model links the workflow declares (knowledge.learn)."""
        requirements = self.cleaned_data["requirements"]
        origin = knowledge.origin(requirements.format, self.file_label())
        return knowledge.learn(requirements.models, origin)

    def file_label(self) -> str:
        """The uploaded file's name, the linked file's name, or "pasted JSON"."""
        if self.cleaned_data.get("file") is not None:
            return self.files["file"].name
        if self.cleaned_data.get("url") is not None:
            return unquote(PurePosixPath(urlsplit(self.data["url"].strip()).path).name) or "link"
        return "pasted JSON"

    def state(self) -> dict:
        """What the next step needs, kept on the server (session): the workflow, what it
        requires, and the search (a job, see library.searches) for each missing model."""
        requirements = self.cleaned_data["requirements"]
        index.mark_present(requirements.models)
        # A model the one-copy store holds is linked at install, with no network: no choice.
        missing = [m.as_json() for m in requirements.models if not (m.present or m.in_store)]
        return {
            "name": self.default_name(),
            "workflow": self.cleaned_data["workflow"],
            "requirements": requirements.as_json(),
            "missing": missing,
            "searches": [searches.queue(model).pk for model in missing],
        }


def fetch(url: str) -> bytes:
    """The body at `url` (http(s) only, at most parse.MAX_BYTES), or a ValidationError."""
    url = github_raw(checked(check_url, url))
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=FETCH_TIMEOUT) as response:
            if response.status_code != 200:
                raise forms.ValidationError(
                    f"The link answered HTTP {response.status_code}; check that it opens "
                    f"in a browser, or download the file and upload it."
                )
            return read_capped(response)
    except httpx.HTTPError as exc:
        raise forms.ValidationError(
            f"Could not fetch the link ({exc}). Check the address, or download the file "
            f"and upload it."
        ) from None


def read_capped(response: httpx.Response) -> bytes:
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > parse.MAX_BYTES:
            raise forms.ValidationError(
                f"The link serves more than {parse.MAX_BYTES // 2**20} MB; no workflow is."
            )
    return bytes(body)


def github_raw(url: str) -> str:
    """GitHub's page for a file (…/blob/…) is HTML; its raw twin is the JSON."""
    parts = urlsplit(url)
    owner_repo, _, rest = parts.path.lstrip("/").partition("/blob/")
    if parts.hostname != "github.com" or not rest:
        return url
    return f"https://raw.githubusercontent.com/{owner_repo}/{rest}"


class ResolveForm(forms.Form):
    """For each missing model: a candidate its search found, a pasted link, or going
    without; for each node type several packs provide (`packs`, the analysis'
    custom_nodes): which.

    A model's fields are named after its search job (`model_<pk>`, `url_<pk>`), so the
    search's live card, which knows only its job, renders radio buttons of the same
    group. Only the candidates found by the time of the POST can be chosen."""

    name = name_field()

    def __init__(self, missing: list[dict], search_ids: list[int], *args, packs=(), **kwargs):
        super().__init__(*args, **kwargs)
        jobs = Job.objects.in_bulk(search_ids)
        self.models = [
            (model, str(pk), jobs.get(pk)) for model, pk in zip(missing, search_ids, strict=True)
        ]
        for model, pk, job in self.models:
            self.fields[f"model_{pk}"] = model_choice(model_key(model), job)
            self.fields[f"url_{pk}"] = forms.CharField(
                required=False, max_length=2000, label=f"Link for {model_key(model)}"
            )
        self.packs = list(packs)
        self.shared = [(p, t) for p in self.packs for t in sorted(p.get("alternatives") or {})]
        for i, (pack, node_type) in enumerate(self.shared):
            self.fields[f"node_{i}"] = provider_choice(node_type, pack)

    def pack_rows(self) -> list[dict]:
        """One row per pack, with a choice of provider for each of its shared node types."""
        fields = [(p, self[f"node_{i}"]) for i, (p, _) in enumerate(self.shared)]
        return [
            {"pack": pack, "choices": [field for p, field in fields if p is pack]}
            for pack in self.packs
        ]

    def picks(self) -> dict[str, str]:
        """{node type: repository} where the user chose another provider."""
        chosen = ((t, self.cleaned_data.get(f"node_{i}")) for i, (_, t) in enumerate(self.shared))
        current = {t: node_key(p) for p, t in self.shared}
        return {t: url for t, url in chosen if url and url != current[t]}

    def rows(self) -> list[dict]:
        """One row per missing model: its search (a job, maybe still running), what its
        card shows, the choice made so far and the link field."""
        return [
            {
                "key": model_key(model),
                "search": job,
                "choice": self[f"model_{pk}"],
                "chosen": self[f"model_{pk}"].value(),
                "url": self[f"url_{pk}"],
                **searches.card(job),
            }
            for model, pk, job in self.models
        ]

    def clean(self) -> dict:
        chosen = {}
        for model, pk, job in self.models:
            choice, url = self.cleaned_data.get(f"model_{pk}"), self.cleaned_data.get(f"url_{pk}")
            if choice:
                chosen[model_key(model)] = self.resolve(pk, job, choice, (url or "").strip())
        self.cleaned_data["chosen"] = chosen
        return self.cleaned_data

    def resolve(self, pk: str, job: Job | None, choice: str, url: str) -> dict | None:
        """{url, sha256, size, sources} to download the model from (the sources: the
        chosen candidate, then the others that are the same file), or None to go without."""
        if choice == "url":
            return self.pasted(pk, url)
        if url:
            self.add_error(f"url_{pk}", "You pasted a link: choose “A link I paste” to use it.")
        if choice == "skip":
            return None
        candidates = searches.candidates(job)
        found = candidates[int(choice.removeprefix("c"))]
        return {
            "url": found["url"],
            "sha256": found["sha256"] or "",
            "size": found["size"],
            "sources": finder.mirrors_of(found, candidates),
        }

    def pasted(self, pk: str, url: str) -> dict | None:
        try:
            if not url:
                raise forms.ValidationError("Paste the link, or choose another option.")
            return {"url": checked(check_url, url)}
        except forms.ValidationError as error:
            self.add_error(f"url_{pk}", error)
            return None

    def spec(self, state: dict) -> tuple[dict, list[str]]:
        """The project spec from the imported workflow with the user's choices applied,
        and the models to go without."""
        workflow, chosen = state["workflow"], self.cleaned_data["chosen"]
        if parse.from_json(workflow).format == parse.Format.LAUNCHER:
            spec = specs.from_launcher(workflow)
        else:
            spec = specs.from_workflow(workflow, self.cleaned_data["name"])
        for model in spec["models"]:
            found = chosen.get(model_key(model), {})
            model.update({k: v for k, v in (found or {}).items() if v})
        spec = specs.with_picks(spec, self.picks())
        return spec, [key for key, found in chosen.items() if found is None]


def provider_choice(node_type: str, pack: dict) -> forms.ChoiceField:
    """The pack chosen for `node_type` first, then the other providers: nothing else."""
    chosen = pack["repository"] or f"the registry's {pack.get('cnr_id')}"
    others = [url for url in pack["alternatives"][node_type] if url]
    refused = f"%(value)s does not provide {node_type}; choose one of the packs listed."
    return forms.ChoiceField(
        choices=[(node_key(pack), chosen), *((url, url) for url in others)],
        initial=node_key(pack),
        required=False,
        label=f"Pack for {node_type}",
        error_messages={"invalid_choice": refused},
    )


def model_choice(key: str, search: Job | None) -> forms.ChoiceField:
    """A candidate the search found (c0 first, the default), a pasted link, or none."""
    found = searches.candidates(search)
    choices = [(f"c{n}", searches.candidate_label(c)) for n, c in enumerate(found)]
    return forms.ChoiceField(
        choices=[*choices, ("url", "A link I paste"), ("skip", "Go without it")],
        widget=forms.RadioSelect,
        initial="c0" if found else None,
        label=key,
        error_messages={
            "required": f"Choose where to get {key}, or go without it.",
            "invalid_choice": f"That download for {key} is not among those found; choose again.",
        },
    )


# --- Project page ----------------------------------------------------------------------


class RollbackForm(forms.Form):
    point = forms.ModelChoiceField(
        queryset=RestorePoint.objects.none(),
        label="Restore point",
        empty_label=None,
        error_messages={"invalid_choice": "That restore point does not exist (any more)."},
    )
    confirm = forms.BooleanField(
        label="Yes, put ComfyUI, its custom nodes and packages back as they were then",
        error_messages={"required": "Tick the box to confirm the rollback."},
    )

    def __init__(self, project, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["point"].queryset = project.restore_points.all()


class DeleteForm(forms.Form):
    confirm = forms.BooleanField(
        label="Yes, delete this project's folder (shared models stay)",
        error_messages={"required": "Tick the box to confirm: deleting cannot be undone."},
    )


class ChosenModelForm(forms.Form):
    """One model of the project's spec, named by its DIR/NAME; cleans to the spec entry."""

    model = forms.ChoiceField(
        error_messages={"invalid_choice": "This project needs no model %(value)s."}
    )

    def __init__(self, project, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.models = {model_key(m): m for m in project.spec.get("models", [])}
        self.fields["model"].choices = [(key, key) for key in self.models]

    def clean_model(self) -> dict:
        return self.models[self.cleaned_data["model"]]


class DownloadAgainForm(ChosenModelForm):
    def clean_model(self) -> dict:
        model = super().clean_model()
        if not model.get("url"):
            raise forms.ValidationError(
                f"No download link is known for {model_key(model)}: put the file in the "
                "models folder, or go without it."
            )
        return model
