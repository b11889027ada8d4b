from django.contrib.auth.models import AbstractBaseUser
from django.db import models

from core.models import AuditEvent


def audit_record(
    *,
    action: str,
    target: models.Model,
    actor: AbstractBaseUser | None = None,
    actor_label: str = "",
    message: str = "",
) -> AuditEvent:
    """Record who did what to which object."""
    user = actor if actor is not None and getattr(actor, "is_authenticated", False) and actor.pk else None
    return AuditEvent.objects.create(
        actor=user,
        actor_label=actor_label or (user.get_username() if user else "system"),
        action=action,
        target_type=target._meta.label_lower,
        target_id=str(target.pk),
        target_repr=str(target)[:200],
        message=message,
    )
