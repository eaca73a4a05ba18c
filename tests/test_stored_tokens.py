"""Tokens saved on the Settings page are sealed at rest; the key can be rotated or lost."""

import json
import os
import secrets
import stat
from io import StringIO
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from comfyhub import config
from comfyhub.library import sources
from comfyhub.library.models import StoredToken
from tests.conftest import manage, subprocess_env

SECRET = "hf_StoredSecretValue0123456789abcdX9Q2"
CIVITAI = "0123456789abcdef0123456789abcdef"
HF_URL = "https://huggingface.co/org/m/resolve/main/a.bin"
BEFORE_SEALING = ("library", "0006_download_active_dest")
SQLITE = connection.vendor == "sqlite"
ENV = {k: v for k, v in os.environ.items() if not k.startswith("COMFYHUB_")}


@pytest.fixture
def key_file(settings, tmp_path):
    """A token key file of this test's own, as the data dir would hold it."""
    settings.TOKEN_KEY, settings.TOKEN_KEY_FILE = "", tmp_path / "token_key"
    config.file_token_keys(settings.TOKEN_KEY_FILE)
    return settings.TOKEN_KEY_FILE


def raw_rows() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM library_storedtoken")
        return str(cursor.fetchall())


def rotate(*args: str) -> str:
    out = StringIO()
    call_command("rotate_token_key", *args, stdout=out)
    return out.getvalue()


# -- at rest --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_database_row_holds_the_token_only_sealed(key_file):
    StoredToken.objects.store("HF_TOKEN", SECRET)
    assert SECRET not in raw_rows() and SECRET[3:-4] not in raw_rows()
    assert StoredToken.objects.value_of("HF_TOKEN") == SECRET


@pytest.mark.skipif(
    not SQLITE,
    reason="reads the SQLite database file's bytes; on PostgreSQL "
    "test_the_database_row_holds_the_token_only_sealed checks the stored column",
)
@pytest.mark.django_db(transaction=True)
def test_the_sqlite_file_and_its_wal_never_hold_a_token(key_file):
    unique = f"hf_{secrets.token_hex(16)}"  # no other test can have left it in a free page
    StoredToken.objects.store("HF_TOKEN", unique)
    db = Path(connection.settings_dict["NAME"])
    files = [db, db.with_name(db.name + "-wal")]
    dump = b"".join(path.read_bytes() for path in files if path.exists())
    assert StoredToken.objects.value_of("HF_TOKEN") == unique
    assert unique[3:].encode() not in dump


@pytest.mark.django_db
def test_dumpdata_shows_no_token(key_file):
    StoredToken.objects.store("CIVITAI_API_TOKEN", CIVITAI)
    out = StringIO()
    call_command("dumpdata", "library.storedtoken", stdout=out)
    assert "CIVITAI_API_TOKEN" in out.getvalue() and CIVITAI not in out.getvalue()


@pytest.mark.django_db
def test_the_admin_lists_a_stored_token_only_masked_and_cannot_edit_it(client, key_file):
    StoredToken.objects.store("HF_TOKEN", SECRET)
    client.force_login(User.objects.create_superuser("root"))
    listing = client.get("/admin/library/storedtoken/").content.decode()
    detail = client.get(f"/admin/library/storedtoken/{StoredToken.objects.get().pk}/change/")
    for html in (listing, detail.content.decode()):
        assert "hf_…X9Q2" in html and SECRET[3:-4] not in html
    assert detail.status_code == 200 and 'name="sealed"' not in detail.content.decode()
    assert client.get("/admin/library/storedtoken/add/").status_code == 403


@pytest.mark.django_db
def test_with_COMFYHUB_TOKEN_KEY_set_the_environment_key_seals(settings, key_file):
    settings.TOKEN_KEY = Fernet.generate_key().decode()
    StoredToken.objects.store("HF_TOKEN", SECRET)
    sealed = StoredToken.objects.get().sealed.encode()
    assert Fernet(settings.TOKEN_KEY).decrypt(sealed).decode() == SECRET


# -- the key --------------------------------------------------------------------------------


def test_the_token_key_is_generated_once_into_the_data_dir_readable_only_by_its_owner(tmp_path):
    path = tmp_path / "token_key"
    first = config.file_token_keys(path)
    assert config.file_token_keys(path) == first and len(first) == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    Fernet(first[0])


def test_a_bad_COMFYHUB_TOKEN_KEY_stops_start_naming_the_variable_but_never_echoing_it(tmp_path):
    bad = "not-a-key-9f8e7d6c5b4a"
    result = manage(
        "check", env={**ENV, "COMFYHUB_DATA_DIR": str(tmp_path), "COMFYHUB_TOKEN_KEY": bad}
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1
    assert "COMFYHUB_TOKEN_KEY" in lines[0] and "9f8e7d6c5b4a" not in lines[0]


def test_a_damaged_key_file_stops_start_naming_the_file(tmp_path):
    (tmp_path / "token_key").write_text("garbage\n")
    result = manage("check", env={**ENV, "COMFYHUB_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2 and "token_key" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.django_db
def test_a_token_no_key_opens_is_reported_on_the_settings_page_and_treated_as_absent(
    client, settings, key_file
):
    settings.HF_TOKEN = "hf_FromTheEnvironment0123456789"
    StoredToken.objects.store("HF_TOKEN", SECRET)
    key_file.write_text(Fernet.generate_key().decode())  # the key that sealed it is lost
    response = client.get("/settings/")
    html = response.content.decode()
    assert response.status_code == 200 and "stored token can't be read; enter it again" in html
    assert 'value="clear"' in html
    assert sources.token_for(HF_URL) == ("HF_TOKEN", settings.HF_TOKEN)


@pytest.mark.django_db
def test_the_settings_page_says_where_the_token_key_is_and_how_to_rotate_it(client, settings):
    settings.TOKEN_KEY, settings.TOKEN_KEY_FILE = "", settings.DATA_DIR / "token_key"
    html = client.get("/settings/").content.decode()
    assert f"<code>{settings.TOKEN_KEY_FILE}</code>" in html and "rotate_token_key" in html
    settings.TOKEN_KEY = Fernet.generate_key().decode()
    html = client.get("/settings/").content.decode()
    assert "<code>COMFYHUB_TOKEN_KEY</code>" in html and settings.TOKEN_KEY not in html


@pytest.mark.django_db
def test_a_token_saved_again_after_the_key_was_lost_is_read_again(client, key_file):
    StoredToken.objects.store("HF_TOKEN", "hf_SealedUnderALostKey0123456789")
    key_file.write_text(Fernet.generate_key().decode())
    client.post("/settings/", {"name": "HF_TOKEN", "token": SECRET, "action": "save"})
    assert sources.token_for(HF_URL) == ("HF_TOKEN", SECRET)
    assert "can't be read" not in client.get("/settings/").content.decode()


# -- rotation -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_rotating_the_key_reseals_every_token_under_a_new_key_and_drops_the_old(key_file):
    StoredToken.objects.store("HF_TOKEN", SECRET)
    StoredToken.objects.store("CIVITAI_API_TOKEN", CIVITAI)
    old = key_file.read_text().strip()
    report = json.loads(rotate("--json"))
    assert report == {"resealed": 2, "unreadable": 0, "key": str(key_file)}
    assert len(key_file.read_text().split()) == 1 and old not in key_file.read_text()
    assert StoredToken.objects.value_of("CIVITAI_API_TOKEN") == CIVITAI
    with pytest.raises(InvalidToken):
        Fernet(old).decrypt(StoredToken.objects.get(name="HF_TOKEN").sealed.encode())


@pytest.mark.django_db
def test_rotation_counts_a_token_no_key_opens_and_leaves_it_to_be_entered_again(key_file):
    StoredToken.objects.store("HF_TOKEN", SECRET)
    key_file.write_text(Fernet.generate_key().decode())
    StoredToken.objects.store("CIVITAI_API_TOKEN", CIVITAI)
    assert json.loads(rotate("--json"))["unreadable"] == 1
    assert "1 stored token can't be read" in rotate()
    assert StoredToken.objects.value_of("CIVITAI_API_TOKEN") == CIVITAI


@pytest.mark.django_db
def test_with_the_keys_in_the_environment_rotation_reseals_under_the_first(settings, key_file):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.TOKEN_KEY = old
    StoredToken.objects.store("HF_TOKEN", SECRET)
    settings.TOKEN_KEY = f"{new},{old}"
    assert "remove the other keys from COMFYHUB_TOKEN_KEY" in rotate()
    assert Fernet(new).decrypt(StoredToken.objects.get().sealed.encode()).decode() == SECRET


@pytest.mark.django_db(transaction=True)
def test_rotate_token_key_exits_0_and_a_running_process_reads_tokens_under_the_new_key(
    settings, tmp_path
):
    settings.TOKEN_KEY, settings.TOKEN_KEY_FILE = "", tmp_path / "token_key"
    StoredToken.objects.store("HF_TOKEN", SECRET)
    old = settings.TOKEN_KEY_FILE.read_text()
    result = manage("rotate_token_key", "--json", env=subprocess_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["resealed"] == 1
    assert settings.TOKEN_KEY_FILE.read_text() != old
    assert StoredToken.objects.value_of("HF_TOKEN") == SECRET


# -- tokens stored before sealing -----------------------------------------------------------


def migrate(*targets) -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(list(targets) or executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_the_migration_seals_tokens_stored_in_plain_text(key_file):
    migrate(BEFORE_SEALING)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO library_storedtoken (name, value, updated_at) VALUES (%s, %s, %s)",
                ["HF_TOKEN", SECRET, timezone.now()],
            )
    finally:
        migrate()
    assert SECRET not in raw_rows() and StoredToken.objects.value_of("HF_TOKEN") == SECRET


@pytest.mark.django_db(transaction=True)
def test_migrating_back_opens_the_tokens_and_forgets_those_no_key_opens(key_file):
    StoredToken.objects.store("HF_TOKEN", SECRET)
    key_file.write_text(Fernet.generate_key().decode())
    StoredToken.objects.store("CIVITAI_API_TOKEN", CIVITAI)
    try:
        migrate(BEFORE_SEALING)
        rows = raw_rows()
    finally:
        migrate()
    assert CIVITAI in rows and "HF_TOKEN" not in rows
