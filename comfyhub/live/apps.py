from django.apps import AppConfig


class LiveConfig(AppConfig):
    name = "comfyhub.live"
    label = "live"
    verbose_name = "Live updates"

    def ready(self) -> None:
        from comfyhub.live.broadcast import job_changed_hint
        from recovery.signals import job_changed

        job_changed.connect(job_changed_hint, dispatch_uid="live-job-changed")
