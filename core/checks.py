"""Deployment checks of our own, run by ``manage.py check --deploy`` next to Django's."""

from django.conf import settings
from django.core.checks import Tags, Warning, register

PROCESS_LOCAL_CACHES = {
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
}


@register(Tags.security, deploy=True)
def rate_limits_check(app_configs, **kwargs) -> list[Warning]:
    """The API's rate limits protect a deployment only if they are on and shared by its processes."""
    problems = []
    if settings.CACHES["default"]["BACKEND"] in PROCESS_LOCAL_CACHES:
        problems.append(
            Warning(
                "The default cache is local to each process, so every API worker counts its own rate limits.",
                hint="Set REDIS_URL: the cache, and the limits, then live in Redis.",
                id="core.W001",
            )
        )
    for name in ("API_RATE_LIMIT", "API_AUTH_FAILURE_RATE_LIMIT"):
        if getattr(settings, name) is None:
            problems.append(
                Warning(
                    f"{name} is none: the API has no such limit.",
                    hint=f"Set {name} to a rate such as 6000/min.",
                    id="core.W002",
                )
            )
    return problems
