"""One active download per destination, kept by the database: `active_dest` holds `dest`
while a download is unfinished, under a unique index. Rows from before take it over: for
each destination, its newest unfinished download; older duplicates a past race left are
refused when they next start (Download.hold_dest), so two never write one .part."""

from django.db import migrations, models

UNFINISHED = ["queued", "running", "waiting", "paused"]


def hold_unfinished(apps, schema_editor):
    Download = apps.get_model("library", "Download")
    unfinished = Download.objects.filter(job__status__in=UNFINISHED).order_by("-created_at", "-id")
    held = set()
    for pk, dest in unfinished.values_list("pk", "dest"):
        if dest not in held:
            held.add(dest)
            Download.objects.filter(pk=pk).update(active_dest=dest)


class Migration(migrations.Migration):
    dependencies = [
        ("library", "0005_download_host_without_password"),
    ]

    operations = [
        migrations.AddField(
            model_name="download",
            name="active_dest",
            field=models.CharField(
                blank=True, editable=False, max_length=500, null=True, unique=True
            ),
        ),
        migrations.RunPython(hold_unfinished, migrations.RunPython.noop),
    ]
