from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules

from recovery.registry import load_job_modules


class RecoveryConfig(AppConfig):
    name = "recovery"
    verbose_name = "Recovery"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Every installed app's jobs.py registers its job kinds with @recoverable.
        autodiscover_modules("jobs")
        load_job_modules()
