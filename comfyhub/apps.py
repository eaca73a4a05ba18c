from django.apps import AppConfig


class ComfyHubConfig(AppConfig):
    name = "comfyhub"
    verbose_name = "ComfyHub"
