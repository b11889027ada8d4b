"""A lab's SSH public keys: parsed and fingerprinted here, stored per organization, and copied
onto the contracts the lab attaches them to (``broker.handover``).

A key is one OpenSSH public key line, ``<type> <base64 blob> [comment]``, as ``ssh-keygen``
writes it into ``id_*.pub``. The blob is checked against its declared type (the type string it
embeds, and the shape of the key for that type), and its fingerprint is what ``ssh-keygen -l``
prints: ``SHA256:`` and the unpadded base64 of the blob's SHA-256. Anything that looks like a
private key is refused before it is parsed, and never stored.
"""

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction

from core.errors import DomainError, InvalidInput
from core.services import audit_record
from marketplace.models import Organization, SshKey

MAX_KEYS_PER_ORGANIZATION = 100
MAX_PUBLIC_KEY_LENGTH = 8192  # a 16,384-bit RSA key's line is about 2,800 characters
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 16384

PRIVATE_KEY_REFUSED = (
    "This looks like a private key. Send only the public key (the .pub file, one line starting with its type); "
    "never send a private key to anyone."
)
_PRIVATE_KEY = re.compile(r"-----BEGIN|PRIVATE KEY|PuTTY-User-Key-File", re.IGNORECASE)

# The key types accepted, each with what follows the type string in its blob.
_ED25519 = "ssh-ed25519"
_RSA = "ssh-rsa"
_SK_ED25519 = "sk-ssh-ed25519@openssh.com"
_SK_ECDSA = "sk-ecdsa-sha2-nistp256@openssh.com"
# ECDSA curve -> the length of an uncompressed point (0x04, x, y).
_ECDSA_POINT_LENGTHS = {"nistp256": 65, "nistp384": 97, "nistp521": 133}
KEY_TYPES = (
    _ED25519,
    _RSA,
    *(f"ecdsa-sha2-{curve}" for curve in _ECDSA_POINT_LENGTHS),
    _SK_ED25519,
    _SK_ECDSA,
)


class SshKeyRefused(InvalidInput):
    """The public key is not one we accept; ``code`` says which way (``private_key_refused``
    or ``invalid``)."""


@dataclass(frozen=True)
class PublicKey:
    type: str
    blob: bytes
    comment: str

    @property
    def fingerprint(self) -> str:
        """``SHA256:`` and the unpadded base64 of the blob's SHA-256, as ``ssh-keygen -l`` prints it."""
        return "SHA256:" + base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")

    @property
    def line(self) -> str:
        """The key as one normalised line: type, base64, and the comment if it has one."""
        body = f"{self.type} {base64.b64encode(self.blob).decode()}"
        return f"{body} {self.comment}" if self.comment else body


def _refused(message: str) -> SshKeyRefused:
    return SshKeyRefused(message, fields={"public_key": [message]})


class _Reader:
    """Reads the SSH wire format of a key blob (RFC 4251 strings and mpints)."""

    def __init__(self, blob: bytes):
        self.blob = blob
        self.offset = 0

    def string(self) -> bytes:
        if self.offset + 4 > len(self.blob):
            raise _refused("The key's data is truncated.")
        (length,) = struct.unpack_from(">I", self.blob, self.offset)
        start = self.offset + 4
        if start + length > len(self.blob):
            raise _refused("The key's data is truncated.")
        self.offset = start + length
        return self.blob[start : self.offset]

    def mpint(self) -> int:
        value = self.string()
        if value and value[0] & 0x80:
            raise _refused("The key's data is not a valid key (a negative number).")
        return int.from_bytes(value, "big")

    def end(self) -> None:
        if self.offset != len(self.blob):
            raise _refused("The key's data has trailing bytes after the key.")


def public_key_parse(text: str) -> PublicKey:
    """Parse and check one OpenSSH public key line; raises ``SshKeyRefused``."""
    if _PRIVATE_KEY.search(text):
        raise SshKeyRefused(
            PRIVATE_KEY_REFUSED, fields={"public_key": [PRIVATE_KEY_REFUSED]}, code="private_key_refused"
        )
    text = text.strip()
    if not text:
        raise _refused("Give one OpenSSH public key line.")
    if len(text) > MAX_PUBLIC_KEY_LENGTH:
        raise _refused(f"A public key line is at most {MAX_PUBLIC_KEY_LENGTH} characters.")
    if "\n" in text or "\r" in text:
        raise _refused("Give one public key, on one line.")
    parts = text.split(None, 2)
    declared = parts[0]
    if declared not in KEY_TYPES:
        raise _refused(f"Unsupported key type {declared[:64]!r}: use one of {', '.join(KEY_TYPES)}.")
    if len(parts) < 2:
        raise _refused("The key's base64 data is missing after its type.")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise _refused("The key's data is not valid base64.") from None
    comment = parts[2].strip() if len(parts) == 3 else ""
    reader = _Reader(blob)
    embedded = reader.string()
    if embedded != declared.encode():
        raise _refused(
            f"The key's data is a {embedded[:64].decode(errors='replace')!r} key, not the {declared!r} it is "
            "declared as."
        )
    _check_body(declared, reader)
    reader.end()
    return PublicKey(type=declared, blob=blob, comment=comment)


def _check_body(key_type: str, reader: _Reader) -> None:
    """The key material after the type string, as the type defines it."""
    if key_type in (_ED25519, _SK_ED25519):
        if len(reader.string()) != 32:
            raise _refused("An Ed25519 key is 32 bytes.")
    elif key_type == _RSA:
        exponent, modulus = reader.mpint(), reader.mpint()
        bits = modulus.bit_length()
        if exponent < 3 or exponent % 2 == 0:
            raise _refused("The RSA key's exponent is not valid.")
        if bits < MIN_RSA_BITS:
            raise _refused(f"An RSA key must have at least {MIN_RSA_BITS} bits; this one has {bits}.")
        if bits > MAX_RSA_BITS:
            raise _refused(f"An RSA key has at most {MAX_RSA_BITS} bits; this one has {bits}.")
    else:  # ECDSA, plain or on a security key
        curve = "nistp256" if key_type == _SK_ECDSA else key_type.removeprefix("ecdsa-sha2-")
        if reader.string() != curve.encode():
            raise _refused(f"The key's curve is not the {curve} its type names.")
        point = reader.string()
        if len(point) != _ECDSA_POINT_LENGTHS[curve] or point[0] != 0x04:
            raise _refused(f"The key's point is not an uncompressed {curve} point.")
    if key_type in (_SK_ED25519, _SK_ECDSA):
        application = reader.string()
        if not application.startswith(b"ssh:"):
            raise _refused("A security key's application must start with 'ssh:'.")


# --- Services ------------------------------------------------------------------------------


def ssh_key_create(
    *,
    organization: Organization,
    name: str,
    public_key: str,
    actor: AbstractBaseUser | None = None,
    actor_label: str = "",
) -> SshKey:
    """Register a lab's SSH public key.

    Refused: a private key, anything but one supported public key, a name or a key the
    organization already has (``ssh_key_name_taken``, ``ssh_key_exists``), or a key past
    ``MAX_KEYS_PER_ORGANIZATION`` (``ssh_key_limit_reached``).
    """
    parsed = public_key_parse(public_key)
    with transaction.atomic():
        # The organization's row, held while its keys are counted, so two creations cannot both
        # pass the limit.
        Organization.objects.select_for_update(no_key=True).filter(pk=organization.pk).values_list("pk").get()
        if SshKey.objects.filter(organization=organization).count() >= MAX_KEYS_PER_ORGANIZATION:
            raise DomainError(
                f"An organization has at most {MAX_KEYS_PER_ORGANIZATION} SSH keys; delete one first.",
                code="ssh_key_limit_reached",
            )
        try:
            with transaction.atomic():
                ssh_key = SshKey.objects.create(
                    organization=organization, name=name, public_key=parsed.line, fingerprint=parsed.fingerprint
                )
        except IntegrityError as error:
            raise _duplicate(error, name=name, fingerprint=parsed.fingerprint) from None
        audit_record(
            action="ssh_key_added",
            target=ssh_key,
            actor=actor,
            actor_label=actor_label,
            message=f"for {organization.name}",
        )
    return ssh_key


def _duplicate(error: IntegrityError, *, name: str, fingerprint: str) -> DomainError:
    constraint = getattr(getattr(error.__cause__, "diag", None), "constraint_name", "") or ""
    if constraint == "ssh_key_name_unique_per_org":
        return DomainError(
            f"You already have an SSH key named {name!r}.",
            fields={"name": ["Already used by another of your keys."]},
            code="ssh_key_name_taken",
        )
    if constraint == "ssh_key_unique_per_org":
        return DomainError(
            f"You already registered this key ({fingerprint}).",
            fields={"public_key": ["Already registered, under another name."]},
            code="ssh_key_exists",
        )
    raise error


def ssh_key_list(*, organization: Organization):
    """An organization's SSH keys, newest first."""
    return SshKey.objects.filter(organization=organization).order_by("-created_at", "-id")


def ssh_key_delete(*, ssh_key: SshKey, actor: AbstractBaseUser | None = None, actor_label: str = "") -> None:
    """Delete a key. Contracts it was attached to keep their copy of it."""
    with transaction.atomic():
        audit_record(
            action="ssh_key_deleted",
            target=ssh_key,
            actor=actor,
            actor_label=actor_label,
        )
        SshKey.objects.filter(pk=ssh_key.pk).delete()
