from django.urls import path

from comfyhub.projects import views

urlpatterns = [
    path("", views.projects, name="projects"),
    path("projects/new/", views.new, name="project-new"),
    path("projects/templates/<str:name>/picture/", views.template_picture, name="template-picture"),
    path("projects/import/", views.import_workflow, name="project-import"),
    path("projects/import/<str:token>/", views.import_confirm, name="project-import-confirm"),
    path("projects/<slug:slug>/", views.project, name="project"),
    path("projects/<slug:slug>/launch/", views.launch, name="project-launch"),
    path("projects/<slug:slug>/stop/", views.stop, name="project-stop"),
    path("projects/<slug:slug>/check/", views.check_again, name="project-check"),
    path("projects/<slug:slug>/nodes/add/", views.add_node, name="project-add-node"),
    path("projects/<slug:slug>/packs/fix/", views.fix_pack, name="project-fix-pack"),
    path("projects/<slug:slug>/fix/", views.fix, name="project-fix"),
    path("projects/<slug:slug>/retry/", views.retry, name="project-retry"),
    path(
        "projects/<slug:slug>/models/download/", views.download_model, name="project-model-download"
    ),
    path("projects/<slug:slug>/models/skip/", views.skip_model, name="project-model-skip"),
    path("projects/<slug:slug>/rollback/", views.rollback, name="project-rollback"),
    path("projects/<slug:slug>/delete/", views.delete, name="project-delete"),
    path("projects/<slug:slug>/export/", views.export, name="project-export"),
    path("projects/<slug:slug>/log/", views.log, name="project-log"),
]
