from django.db import models


class AuditEvent(models.Model):
    """Who did what, when: admin changes, cancellations, voids, money movements."""

    actor = models.ForeignKey(
        "auth.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    actor_label = models.CharField(max_length=200, help_text="The user, organization or job that acted.")
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=100)
    target_id = models.CharField(max_length=64)
    target_repr = models.CharField(max_length=200)
    message = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["target_type", "target_id"])]

    def __str__(self) -> str:
        return f"{self.actor_label} {self.action} {self.target_repr}"
