"""Restore points: taken before any change to an installed project; rollback returns to one."""

import contextlib
from pathlib import Path

from comfyhub.projects import envs, mirrors, tools
from comfyhub.projects.install import (
    from_registry,
    install_node,
    install_pack_requirements,
    node_folder,
    pins_without,
)
from comfyhub.projects.models import Project, ProjectStatus, RestorePoint, node_key
from recovery.errors import JobError
from recovery.models import Category, Job


def take(project: Project, reason: str) -> RestorePoint:
    """A registry pack is recorded at its version (it has no git head). The point keeps
    the cut-off its packages resolve under, for the rollback's sync."""
    log = project.install_log
    git_packs = [
        project.comfyui_dir / "custom_nodes" / pin["name"]
        for pin in project.node_pins
        if not from_registry(pin)
    ]
    heads = {folder.name: tools.head(folder, log) for folder in git_packs}
    pins = [
        pin if from_registry(pin) else {**pin, "commit": heads[pin["name"]]}
        for pin in project.node_pins
    ]
    return RestorePoint.objects.create(
        project=project,
        reason=reason,
        comfyui_commit=tools.head(project.comfyui_dir, log),
        node_pins=pins,
        pip_freeze=envs.freeze(project),
        resolved_as_of=envs.restore_point_as_of(project, git_packs),
    )


def set_node_commit(project: Project, repository: str, commit: str) -> RestorePoint:
    """Move one custom node to another commit, after taking a restore point. Git packs
    only: a registry pack has versions, not commits."""
    pin = next(p for p in project.node_pins if p["repository"] == repository)
    if from_registry(pin):
        raise JobError(
            f"{pin['cnr_id']} is installed from the Comfy Registry at version "
            f"{pin['version']}; it has no git commit to move to.",
            category=Category.VALIDATION,
        )
    point = take(project, f"moving {repository} to {commit[:12]}")
    tools.checkout(project.comfyui_dir / "custom_nodes" / pin["name"], commit, project.install_log)
    pins = [{**p, "commit": commit} if p is pin else p for p in project.node_pins]
    project.touch(node_pins=pins)
    return point


def rollback(project: Project, point: RestorePoint) -> None:
    """ComfyUI, every custom node and the pip packages back to `point`."""
    log = project.install_log
    tools.checkout(project.comfyui_dir, point.comfyui_commit, log)
    keep = {pin["name"] for pin in point.node_pins}
    for pin in project.node_pins:
        if pin["name"] not in keep:  # added after the restore point
            with contextlib.suppress(FileNotFoundError):
                tools.remove_tree(project.comfyui_dir / "custom_nodes" / pin["name"])
    current = {node_key(pin): pin for pin in project.node_pins}
    for pin in point.node_pins:
        folder = project.comfyui_dir / "custom_nodes" / node_folder(pin)
        if from_registry(pin):
            if not folder.exists() or current.get(node_key(pin)) != pin:
                reinstall_registry_pack(project, pin)
            continue
        if not folder.exists():
            tools.clone(pin["repository"], folder, log, pin["commit"])
        tools.checkout(folder, pin["commit"], log)
    restore_packages(project, point)
    project.touch(
        comfyui_commit=point.comfyui_commit,
        node_pins=point.node_pins,
        resolved_as_of=point.resolved_as_of,
    )


def reinstall_registry_pack(project: Project, pin: dict) -> None:
    """The pack from the Comfy Registry at the pinned version, never from git: a restore
    point names that version, and git holds no commit known to match it."""
    install_node(project, {"repository": "", "cnr_id": pin["cnr_id"], "version": pin["version"]})


def restore_packages(project: Project, point: RestorePoint) -> None:
    if point.pip_freeze.strip():
        envs.restore(project, point.pip_freeze, point.resolved_as_of)


def add_node(project: Project, repository: str, commit: str = "") -> RestorePoint:
    """Install one more custom node pack, after taking a restore point."""
    point = take(project, f"adding {repository}")
    pin = install_node(project, {"repository": repository, "commit": commit})
    nodes = [*project.spec.get("nodes", []), {"repository": repository, "commit": pin["commit"]}]
    project.spec = {**project.spec, "nodes": nodes}
    project.touch(spec=project.spec, node_pins=[*pins_without(project, repository), pin])
    return point


def reinstall(project: Project) -> RestorePoint:
    """Run every install step again (a fresh job), after taking a restore point."""
    point = take(project, "re-install")
    job = Job.objects.create(kind="project_install", params={"project": project.pk})
    project.touch(install_job=job, status=ProjectStatus.INSTALLING)
    return point


def pin_pack(project: Project, repository: str, commit: str) -> RestorePoint:
    """Move a git pack to `commit` (one that still defines node types a workflow needs)
    and install its requirements there, after taking a restore point. The spec keeps the
    pin, so a re-install does too; failing requirements raise with the point kept for a
    rollback, and the spec, written only after they installed, keeps the old pin."""
    pin = next(p for p in project.node_pins if p["repository"] == repository)
    folder = project.comfyui_dir / "custom_nodes" / pin["name"]
    bring_from_mirror(folder, repository, commit, project.install_log)
    point = set_node_commit(project, repository, commit)
    install_pack_requirements(project, folder)
    nodes = [
        {**node, "commit": commit} if node.get("repository") == repository else node
        for node in project.spec.get("nodes", [])
    ]
    project.touch(spec={**project.spec, "nodes": nodes})
    return point


def bring_from_mirror(folder: Path, repository: str, commit: str, log: Path) -> None:
    """`commit` into the pack's clone from the data dir's mirror when the clone lacks it:
    the history search reads the mirror, which another project may have fetched since."""
    if mirrors.has_commit(folder, commit, log):
        return
    mirror = mirrors.ensure(repository, commit, log)
    tools.git(log, "fetch", "--quiet", "--", str(mirror), tools.check_commit(commit), cwd=folder)
