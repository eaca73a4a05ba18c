from django.apps import AppConfig


class ProjectsConfig(AppConfig):
    name = "comfyhub.projects"
    label = "projects"
    verbose_name = "Projects"

    def ready(self) -> None:
        from comfyhub.projects.models import follow_install_job
        from recovery.signals import job_changed

        job_changed.connect(follow_install_job, dispatch_uid="projects-follow-install")
