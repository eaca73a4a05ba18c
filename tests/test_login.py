"""Off loopback, every page and socket needs a login (see also test_live / test_config)."""

import os

import pytest
from django.contrib.auth.models import User

from tests.conftest import manage

LOGIN_MW = "django.contrib.auth.middleware.LoginRequiredMiddleware"


@pytest.fixture
def login_required(settings):
    settings.LOGIN_REQUIRED = True
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, LOGIN_MW]


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/", "/system/", "/downloads/", "/recovery/", "/settings/"])
def test_pages_redirect_an_anonymous_visitor_to_login(client, login_required, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith(f"/admin/login/?next={path}")


@pytest.mark.django_db
def test_a_logged_in_user_sees_the_pages(client, login_required):
    client.force_login(User.objects.create_user("ada"))
    assert client.get("/system/").status_code == 200


@pytest.mark.django_db
def test_healthz_stays_open_for_monitors(client, login_required):
    assert client.get("/healthz").status_code == 200


def test_serve_off_loopback_refuses_to_start_until_a_user_exists(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYHUB_")}
    env.update(COMFYHUB_DATA_DIR=str(tmp_path), COMFYHUB_HOST="0.0.0.0")
    assert manage("migrate", "--noinput", env=env).returncode == 0
    result = manage("serve", env=env, timeout=60)
    assert result.returncode != 0
    assert "python manage.py createsuperuser" in result.stderr
