from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    name = "comfyhub.workflows"
    label = "workflows"
    verbose_name = "Workflows"
