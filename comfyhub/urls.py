from django.contrib import admin
from django.contrib.auth.decorators import login_not_required
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from comfyhub import views
from comfyhub.library import views as library_views

urlpatterns = [
    path("downloads/", library_views.downloads, name="downloads"),
    path(
        "downloads/<int:pk>/<str:action>/",
        library_views.download_action,
        name="download-action",
    ),
    path("", include("recovery.urls")),
    path("recovery/", views.recovery, name="recovery"),
    path("recovery/jobs/<int:pk>/<str:action>/", views.job_action, name="job-action"),
    path("settings/", views.settings_page, name="settings"),
    path("settings/bandwidth/", views.bandwidth_setting, name="settings-bandwidth"),
    path("system/", views.system, name="system"),
    path("healthz", views.healthz, name="healthz"),
    # Browsers ask for it on every first visit, logged in or not.
    path(
        "favicon.ico",
        login_not_required(RedirectView.as_view(url=static("favicon.ico"), permanent=True)),
    ),
    path("admin/", admin.site.urls),
    path("", include("comfyhub.projects.urls")),
]
