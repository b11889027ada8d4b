"""SSH keys of a lab, for the contracts' access manifests: register, list, read, delete."""

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from core.schema import conflict, documented_error
from core.serializers import StrictCharField, StrictSerializer
from marketplace.models import SshKey
from marketplace.permissions import IsLab
from marketplace.ssh_keys import (
    MAX_KEYS_PER_ORGANIZATION,
    MAX_PUBLIC_KEY_LENGTH,
    ssh_key_create,
    ssh_key_delete,
    ssh_key_list,
)

EXAMPLE_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFyqq22jLtvSRv1iPjjzW4Vg44HJC/W7+9Kn7/ztmL39 alice@train-01"


@extend_schema_serializer(
    examples=[
        OpenApiExample("An Ed25519 key", value={"name": "alice laptop", "public_key": EXAMPLE_KEY}, request_only=True)
    ]
)
class SshKeyCreateSerializer(StrictSerializer):
    name = StrictCharField(
        max_length=SshKey._meta.get_field("name").max_length,
        help_text="A name for the key, unique among your keys.",
    )
    public_key = StrictCharField(
        max_length=MAX_PUBLIC_KEY_LENGTH,
        trim_whitespace=True,
        help_text="One OpenSSH public key line (the .pub file): ssh-ed25519, ssh-rsa of at least 2048 bits, "
        "ecdsa-sha2-nistp256/384/521, sk-ssh-ed25519@openssh.com or sk-ecdsa-sha2-nistp256@openssh.com, then the "
        "base64 key and an optional comment. Never a private key: one is refused.",
    )


class SshKeySerializer(serializers.ModelSerializer):
    class Meta:
        model = SshKey
        fields = ["id", "name", "public_key", "fingerprint", "created_at"]
        read_only_fields = fields
        extra_kwargs = {
            "id": {"help_text": "The key's id: attach it to a contract with PUT /api/v1/contracts/{id}/access."},
            "name": {"help_text": "The key's name, unique among your keys."},
            "public_key": {"help_text": "The public key line, normalised: type, base64, comment."},
            "fingerprint": {"help_text": "SHA256:<base64>, as `ssh-keygen -l` prints it."},
            "created_at": {"help_text": "When it was registered."},
        }


class SshKeyViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    """Your organization's SSH public keys, which you attach to your contracts for their
    providers to install."""

    permission_classes = [IsLab]
    serializer_class = SshKeySerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no caller
            return SshKey.objects.none()
        return ssh_key_list(organization=self.request.user.organization)

    @extend_schema(summary="List your SSH keys", description="Your SSH public keys, newest first.")
    def list(self, request: Request) -> Response:
        return super().list(request)

    @extend_schema(summary="Read an SSH key", description="One of your SSH public keys.")
    def retrieve(self, request: Request, pk: str) -> Response:
        return super().retrieve(request, pk=pk)

    @extend_schema(
        request=SshKeyCreateSerializer,
        responses={
            201: SshKeySerializer,
            400: documented_error(
                "Bad request",
                private_key_refused="the key looks like a private key: send only the public key, never a private one",
                invalid="not one supported OpenSSH public key line (type, base64 that holds a key of that type, "
                "an RSA key of at least 2048 bits); `fields.public_key` says why",
            ),
            409: conflict(
                ssh_key_name_taken="you already have a key of that name",
                ssh_key_exists="you already registered this key (same fingerprint), under another name",
                ssh_key_limit_reached=f"you have {MAX_KEYS_PER_ORGANIZATION} keys, the most an organization may",
            ),
        },
        summary="Register an SSH public key",
        description="201 with the key and its fingerprint. Attach it to contracts with "
        "PUT /api/v1/contracts/{id}/access; their providers read it in the access manifest.",
    )
    def create(self, request: Request) -> Response:
        serializer = SshKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        ssh_key = ssh_key_create(
            organization=request.user.organization, actor_label=request.user.audit_label, **serializer.validated_data
        )
        return Response(SshKeySerializer(ssh_key).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=None,
        responses={204: None},
        summary="Delete an SSH key",
        description="204. Contracts the key was attached to keep their copy in their access manifest; attach "
        "another set to change it.",
    )
    def destroy(self, request: Request, pk: str) -> Response:
        ssh_key = get_object_or_404(self.get_queryset(), pk=pk)
        ssh_key_delete(ssh_key=ssh_key, actor_label=request.user.audit_label)
        return Response(status=status.HTTP_204_NO_CONTENT)
