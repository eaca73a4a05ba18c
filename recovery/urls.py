from django.urls import path

from recovery import views

urlpatterns = [
    path("recovery/metrics.json", views.metrics_json, name="recovery-metrics"),
]
