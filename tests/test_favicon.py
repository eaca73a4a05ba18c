"""/favicon.ico, which every browser asks for on the first page load."""

LOGIN_MW = "django.contrib.auth.middleware.LoginRequiredMiddleware"


def test_favicon_ico_answers_with_an_icon(client):
    response = client.get("/favicon.ico", follow=True)
    assert response.redirect_chain == [("/static/favicon.ico", 301)]
    assert response.status_code == 200 and response["Content-Type"] == "image/x-icon"
    assert b"".join(response.streaming_content).startswith(b"\x00\x00\x01\x00")


def test_favicon_ico_needs_no_login_when_pages_do(client, settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, LOGIN_MW]
    response = client.get("/favicon.ico", follow=True)
    assert response.redirect_chain == [("/static/favicon.ico", 301)]
    assert response.status_code == 200
