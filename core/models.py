from django.db import models


class IdempotencyRecord(models.Model):
    """The first response to a POST carrying an Idempotency-Key, replayed on retries."""

    organization = models.ForeignKey("marketplace.Organization", on_delete=models.CASCADE)
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of method, path and body.")
    response_status = models.PositiveSmallIntegerField(null=True)
    response_body = models.JSONField(null=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "key"], name="idempotency_key_unique_per_org"),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id}:{self.key}"
