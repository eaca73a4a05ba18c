"""Downloads requested before hosts were cleaned kept `user:password@` in their host and
their job's breaker key, where pages and the recovery view show it. Strip it; drop the
breakers keyed by it (a breaker only holds a failure count, the clean key starts afresh)."""

from django.db import migrations


def strip_passwords(apps, schema_editor):
    Download = apps.get_model("library", "Download")
    Job = apps.get_model("recovery", "Job")
    CircuitBreaker = apps.get_model("recovery", "CircuitBreaker")
    for download in Download.objects.filter(host__contains="@").only("host", "job_id"):
        clean = download.host.rpartition("@")[2]
        Download.objects.filter(pk=download.pk).update(host=clean)
        Job.objects.filter(pk=download.job_id).update(breaker_key=clean)
    CircuitBreaker.objects.filter(key__contains="@").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("library", "0004_preferences"),
        ("recovery", "0001_initial"),
    ]

    operations = [migrations.RunPython(strip_passwords, migrations.RunPython.noop)]
