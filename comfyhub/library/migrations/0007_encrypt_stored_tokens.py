"""Seal the tokens stored in plain text before sealing existed (see library/sealing.py)."""

from django.db import migrations

from comfyhub.library import sealing


def seal_plain_tokens(apps, schema_editor):
    StoredToken = apps.get_model("library", "StoredToken")
    for token in StoredToken.objects.all():
        token.sealed = sealing.seal(token.sealed)
        token.save(update_fields=["sealed"])


def open_sealed_tokens(apps, schema_editor):
    """Back to plain text; a token no key opens is useless as a Bearer value, so it goes."""
    StoredToken = apps.get_model("library", "StoredToken")
    for token in StoredToken.objects.all():
        value = sealing.unseal(token.sealed)
        if value is None:
            token.delete()
            continue
        token.sealed = value
        token.save(update_fields=["sealed"])


class Migration(migrations.Migration):
    dependencies = [
        ("library", "0006_download_active_dest"),
    ]

    operations = [
        migrations.RenameField(model_name="storedtoken", old_name="value", new_name="sealed"),
        migrations.RunPython(seal_plain_tokens, open_sealed_tokens),
    ]
