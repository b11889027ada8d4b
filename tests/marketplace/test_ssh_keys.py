"""SSH public keys: parsed and fingerprinted as ssh-keygen does, private keys refused; labs
register, list, read and delete them."""

import base64
import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.models import AuditEvent
from marketplace.models import SshKey
from marketplace.ssh_keys import MAX_KEYS_PER_ORGANIZATION, SshKeyRefused, public_key_parse
from tests.conftest import assert_error

URL = "/api/v1/ssh-keys"

# Keys written by ssh-keygen (OpenSSH 9), each with what `ssh-keygen -lf` printed for it. The
# security-key ones were built by hand (no device here) and fingerprinted by ssh-keygen too.
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFyqq22jLtvSRv1iPjjzW4Vg44HJC/W7+9Kn7/ztmL39 me@ed25519"
RSA_2048 = (
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDCj8DOcsb43NXkOfkj1Qe2ZOq2E8zegBkhUY6YcjFpUrKI7E/pKA3Jqq0qR9jo"
    "zjUmdSPUTw35zKBvap6u8rxO8gyYfVMr/hiakOjrhArYs+CbvpDzHyZIzy3pvMpY85Vve5RZ7odIYGgpZlBj46J7SLJo+/BnK5qD"
    "CCIIVmxeNqhTLeFpSdtByvTC8n9B27A/nP5sOzlqZySJMFd8VrDDI0hSJMO29gLqbQ2D5Nim1sPoIOdlGP8nR/w9v3jPzS38NjPl"
    "YpPjQQCPGMt7RR+dmBTDR+sADNDBv/mnhF/wydmWc0QrXWuGnrhh73ccmbT2vwGFYyTzUZQeWM3EVXNH me@rsab2048"
)
RSA_1024 = (
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDk7L5SlGKB23BOJ9wEunUcleZ817yTZ+xgYPa3pdwjOiIgh70HqzwgbPP7pI2M"
    "rIrQTFWYouhE2w4K1wVJZCS3QPQ5ck9erGj2xD7YVkjqxPsV5+ClbQL5BYrzQ8X16fPgAzE272609f3LpSjsuqCYAe/mtky8rVDa"
    "LYOtLdL6iQ== me@rsab1024"
)
ECDSA_256 = (
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBOZjnZYdfXSVTPYVl5xewRlh2wmG"
    "jrwh7WlMBQZYovHcUTy4Zl/izQiP5ytH0BdsZVqEjHZEATgc78tVkTLgsrA= me@ecdsab256"
)
ECDSA_384 = (
    "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBNQ+00Uv4I3mpCJ5MccQl4pV2pYQ"
    "kjsvashpzvMUoSmBww2roeHsEEqVojYnxDI8/zFPE/mB01HBOEAmodJIrW+py09N40b5JTFg9vFJ/uN2sGvXp8uTVPjeY3VPpyUy"
    "Gg== me@ecdsab384"
)
ECDSA_521 = (
    "ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjEAAAAIbmlzdHA1MjEAAACFBAD4jzqtuh8rS7Sp3KO/aEH55OS5"
    "VkEwJRjT2CLtLambsRj3NmEdVCe1OntDMw6H7VkHAC4b6DquzVAevf365sugFwB/EcjnN9VP1RYKZfkqBnAa2Pp90bzFPpNxa1QV"
    "CB3n2geU5LkfPUvEvpbaQ/RvgEnVZnPgf7IZ4YWfYGcCPYxGiw== me@ecdsab521"
)
SK_ED25519 = (
    "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIAABAgMEBQYHCAkKCwwNDg8QERITF"
    "BUWFxgZGhscHR4fAAAABHNzaDo= yubi"
)
SK_ECDSA = (
    "sk-ecdsa-sha2-nistp256@openssh.com AAAAInNrLWVjZHNhLXNoYTItbmlzdHAyNTZAb3BlbnNzaC5jb20AAAAIbmlzdHAyN"
    "TYAAABBBGsX0fLhLEJH+Lzm5WOkQPJ3A32BLeszoPShOUXYmMKWT+NC4v4af5uO5+tKfA+eFivOM1drMV7Oy7ZAaDe/UfUAAAAEc"
    "3NoOg== yubi"
)
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)


def _string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _line(key_type: str, blob: bytes, comment: str = "") -> str:
    return f"{key_type} {base64.b64encode(blob).decode()} {comment}".strip()


@pytest.mark.parametrize(
    ("line", "key_type", "fingerprint"),
    [
        (ED25519, "ssh-ed25519", "SHA256:snLM+hSHCRZAKNIPIqebOku39P/yizb/f3RPqIRHelM"),
        (RSA_2048, "ssh-rsa", "SHA256:Pi+ASNicn2ZQw0aBka0sbLFKEqsuEjgmRy+gHnQLv9g"),
        (ECDSA_256, "ecdsa-sha2-nistp256", "SHA256:sxPGSqoRZ5s1ZA93ot/JJuOYlP4QJEQEtDa6ZG2umGg"),
        (ECDSA_384, "ecdsa-sha2-nistp384", "SHA256:VqzQu0MWJrHP/pk1caF6YEx2Dp17OxOMB0VjapmWc5s"),
        (ECDSA_521, "ecdsa-sha2-nistp521", "SHA256:mCNoGr9VJivC4zYIWA14z1jawFe5WW+Ky+isWbkmBIY"),
        (SK_ED25519, "sk-ssh-ed25519@openssh.com", "SHA256:/p0CbeE3dk2SyW1OXXsThGc12ezDVD8eGw2/vtztDfk"),
        (SK_ECDSA, "sk-ecdsa-sha2-nistp256@openssh.com", "SHA256:Sq6FPgsPWZc3RXSXKFq4uzEhPEwaHZCAoX46/7Q5024"),
    ],
)
def test_each_type_parses_with_ssh_keygens_fingerprint(line, key_type, fingerprint):
    key = public_key_parse(f"  {line}\n")
    assert (key.type, key.fingerprint, key.line) == (key_type, fingerprint, line)


def test_the_comment_is_optional_and_does_not_change_the_fingerprint():
    bare = " ".join(ED25519.split()[:2])
    assert public_key_parse(bare).fingerprint == public_key_parse(ED25519).fingerprint
    assert public_key_parse(bare).line == bare


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (RSA_1024, "at least 2048 bits; this one has 1024"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFyqq22jLtvSRv1iPjjzW4Vg44HJC/W7+9Kn7/ztmL3!", "not valid base64"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFyqq22jLtvSRv1iPjjzW4Vg44HJC/W7+9Kn7/ztmL3", "not valid base64"),
        ("ssh-ed25519", "base64 data is missing"),
        ("ssh-dss AAAAB3NzaC1kc3M=", "Unsupported key type"),
        ('from="10.0.0.1" ' + ED25519, "Unsupported key type"),
        (ED25519 + "\n" + ECDSA_256, "on one line"),
        ("", "one OpenSSH public key line"),
        # An Ed25519 blob declared as RSA, and the other way round.
        ("ssh-rsa " + ED25519.split()[1], "is a 'ssh-ed25519' key, not the 'ssh-rsa'"),
        ("ssh-ed25519 " + RSA_2048.split()[1], "is a 'ssh-rsa' key, not the 'ssh-ed25519'"),
        # A P-256 key declared as P-384.
        ("ecdsa-sha2-nistp384 " + ECDSA_256.split()[1], "not the 'ecdsa-sha2-nistp384'"),
        (_line("ssh-ed25519", _string(b"ssh-ed25519") + _string(b"\x01" * 31)), "32 bytes"),
        (_line("ssh-ed25519", _string(b"ssh-ed25519") + _string(b"\x01" * 32) + b"x"), "trailing bytes"),
        (_line("ssh-ed25519", _string(b"ssh-ed25519") + b"\x00\x00\x00\x20"), "truncated"),
        (_line("ecdsa-sha2-nistp256", _string(b"ecdsa-sha2-nistp256") + _string(b"nistp384")), "curve"),
        (
            _line(
                "ecdsa-sha2-nistp256", _string(b"ecdsa-sha2-nistp256") + _string(b"nistp256") + _string(b"\x03" * 65)
            ),
            "uncompressed",
        ),
        (
            _line(
                "sk-ssh-ed25519@openssh.com",
                _string(b"sk-ssh-ed25519@openssh.com") + _string(bytes(32)) + _string(b"web"),
            ),
            "application",
        ),
    ],
)
def test_what_is_not_a_supported_public_key_is_refused(text, says):
    with pytest.raises(SshKeyRefused) as refused:
        public_key_parse(text)
    assert refused.value.code == "invalid"
    assert says in refused.value.message


@pytest.mark.parametrize(
    "text",
    [PRIVATE_KEY, "-----BEGIN RSA PRIVATE KEY-----", "PuTTY-User-Key-File-3: ssh-ed25519", ED25519 + " PRIVATE KEY"],
)
def test_a_private_key_is_refused_with_a_warning(text):
    with pytest.raises(SshKeyRefused) as refused:
        public_key_parse(text)
    assert refused.value.code == "private_key_refused"
    assert "never send a private key" in refused.value.message


@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused_never_crashes(text):
    try:
        key = public_key_parse(text)
    except SshKeyRefused:
        return
    assert key.fingerprint.startswith("SHA256:")


@given(st.binary(max_size=200), st.sampled_from(["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", SK_ECDSA.split()[0]]))
def test_any_blob_parses_or_is_refused_never_crashes(blob, key_type):
    with contextlib.suppress(SshKeyRefused):
        public_key_parse(_line(key_type, _string(key_type.encode()) + blob))


# --- The API ---------------------------------------------------------------------------------


def create(client, name="laptop", public_key=ED25519, **headers):
    return client.post(URL, {"name": name, "public_key": public_key}, format="json", **headers)


@pytest.mark.django_db
class TestApi:
    def test_a_lab_registers_lists_reads_and_deletes_a_key(self, lab_client):
        response = create(lab_client)
        assert response.status_code == 201, response.content
        key = response.json()
        created_at = key.pop("created_at")
        assert created_at
        assert key == {
            "id": key["id"],
            "name": "laptop",
            "public_key": ED25519,
            "fingerprint": "SHA256:snLM+hSHCRZAKNIPIqebOku39P/yizb/f3RPqIRHelM",
        }
        assert create(lab_client, name="ci", public_key=ECDSA_256).status_code == 201
        listed = lab_client.get(URL).json()
        assert listed["count"] == 2
        assert [item["name"] for item in listed["results"]] == ["ci", "laptop"]  # newest first
        assert lab_client.get(f"{URL}/{key['id']}").json()["fingerprint"] == key["fingerprint"]
        deleted = lab_client.delete(f"{URL}/{key['id']}")
        assert (deleted.status_code, deleted.content) == (204, b"")
        assert_error(lab_client.get(f"{URL}/{key['id']}"), 404, "not_found")
        assert [item["name"] for item in lab_client.get(URL).json()["results"]] == ["ci"]
        audited = AuditEvent.objects.filter(target_type="marketplace.sshkey").order_by("id")
        assert list(audited.values_list("action", flat=True)) == [
            "ssh_key_added",
            "ssh_key_added",
            "ssh_key_deleted",
        ]

    def test_a_private_key_is_a_400_that_says_so_and_is_not_stored(self, lab_client):
        error = assert_error(create(lab_client, public_key=PRIVATE_KEY), 400, "private_key_refused")
        assert "never send a private key" in error["message"]
        assert "public_key" in error["fields"]
        assert SshKey.objects.count() == 0

    def test_a_bad_key_is_a_400_naming_the_field(self, lab_client):
        error = assert_error(create(lab_client, public_key=RSA_1024), 400, "invalid")
        assert error["fields"] == {"public_key": ["An RSA key must have at least 2048 bits; this one has 1024."]}

    def test_a_name_or_a_key_twice_is_a_conflict(self, lab_client, other_lab_client):
        assert create(lab_client).status_code == 201
        error = assert_error(create(lab_client, public_key=RSA_2048), 409, "ssh_key_name_taken")
        assert "name" in error["fields"]
        # The same key under another name; a comment changes nothing of the key.
        same = " ".join(ED25519.split()[:2]) + " another comment"
        error = assert_error(create(lab_client, name="desktop", public_key=same), 409, "ssh_key_exists")
        assert "public_key" in error["fields"]
        # Another lab may register the same key under the same name.
        assert create(other_lab_client).status_code == 201
        assert SshKey.objects.count() == 2

    def test_an_organization_has_at_most_so_many_keys(self, lab_client):
        organization = lab_client.organization
        SshKey.objects.bulk_create(
            SshKey(organization=organization, name=f"key {n}", public_key="x", fingerprint=f"SHA256:{n}")
            for n in range(MAX_KEYS_PER_ORGANIZATION - 1)
        )
        assert create(lab_client).status_code == 201
        assert_error(create(lab_client, name="one more", public_key=ECDSA_256), 409, "ssh_key_limit_reached")
        assert SshKey.objects.count() == MAX_KEYS_PER_ORGANIZATION

    def test_providers_may_not_and_others_keys_are_not_found(self, lab_client, other_lab_client, provider_client):
        assert_error(create(provider_client), 403, "permission_denied")
        assert_error(provider_client.get(URL), 403, "permission_denied")
        key = create(lab_client).json()
        assert_error(other_lab_client.get(f"{URL}/{key['id']}"), 404, "not_found")
        assert_error(other_lab_client.delete(f"{URL}/{key['id']}"), 404, "not_found")
        assert other_lab_client.get(URL).json()["count"] == 0
        assert SshKey.objects.count() == 1

    def test_both_roles_may(self, both_client):
        assert create(both_client).status_code == 201

    def test_unknown_fields_and_blanks_are_refused(self, lab_client):
        body = {"name": "laptop", "public_key": ED25519, "private_key": "x"}
        assert_error(lab_client.post(URL, body, format="json"), 400, "invalid")
        assert_error(create(lab_client, name=""), 400, "invalid")
        assert SshKey.objects.count() == 0

    def test_a_retried_create_with_its_key_answers_the_first_and_creates_one(self, lab_client):
        first = create(lab_client, HTTP_IDEMPOTENCY_KEY="key-1")
        again = create(lab_client, HTTP_IDEMPOTENCY_KEY="key-1")
        assert (first.status_code, again.status_code) == (201, 201)
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json() == first.json()
        assert SshKey.objects.count() == 1
        other = create(lab_client, name="other", HTTP_IDEMPOTENCY_KEY="key-1")
        assert_error(other, 409, "idempotency_key_reused")

    def test_a_delete_with_an_idempotency_key_deletes(self, lab_client):
        key = create(lab_client).json()
        first = lab_client.delete(f"{URL}/{key['id']}", HTTP_IDEMPOTENCY_KEY="delete-1")
        assert first.status_code == 204
        assert SshKey.objects.count() == 0
        again = lab_client.delete(f"{URL}/{key['id']}", HTTP_IDEMPOTENCY_KEY="delete-1")
        assert again.status_code == 204
