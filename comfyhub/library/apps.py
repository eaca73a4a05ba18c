from django.apps import AppConfig


class LibraryConfig(AppConfig):
    name = "comfyhub.library"
    label = "library"
    verbose_name = "Model library"
