from django.urls import path

from comfyhub import views

urlpatterns = [
    path("", views.planned, {"title": "Projects", "issue": 7}, name="projects"),
]
