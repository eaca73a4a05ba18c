from django.apps import AppConfig


class LibraryConfig(AppConfig):
    name = "comfyhub.library"
    label = "library"
    verbose_name = "Model library"

    def ready(self) -> None:
        from comfyhub.library.models import follow_job
        from recovery.signals import job_changed

        job_changed.connect(follow_job, dispatch_uid="library-follow-job")
