from django.apps import AppConfig


class BackofficeConfig(AppConfig):
    """The operators' pages that read every app (the market overview) and the demo market."""

    name = "backoffice"
    verbose_name = "Back office"
