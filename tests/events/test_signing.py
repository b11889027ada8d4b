"""Webhook signatures against vectors computed outside Python (openssl dgst -sha256 -hmac)."""

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from events import signing
from events.services import event_body

BODY = b'{"id":42,"type":"contract.created","created":"2026-01-01T00:00:00Z","data":{}}'
T = 1767225600
SECRET = "whsec_c2VjcmV0"
V1 = "d021b54b307bcb6bc3bf744ac7101b504a3fa51cab9d7f4f025ae636128c66ba"


def test_known_vector():
    assert signing.sign(SECRET, BODY, T) == f"t={T},v1={V1}"
    assert signing.verify(SECRET, f"t={T},v1={V1}", BODY, now=T + 10)


def test_the_secret_derivation_vector(settings):
    settings.SECRET_KEY = "k"
    assert signing.endpoint_secret("abc") == "whsec_DzIMCub9KrINOU4dqtz03PwYu29B_KKnkcNLqi2PtgM"


def test_the_body_is_the_events_api_shape():
    body = event_body(id=42, type="contract.created", created=datetime(2026, 1, 1, tzinfo=UTC), data="{}")
    assert body == BODY


def test_verify_refuses_a_stale_a_tampered_or_a_foreign_signature():
    header = signing.sign(SECRET, BODY, T)
    assert not signing.verify(SECRET, header, BODY, tolerance=300, now=T + 301)
    assert not signing.verify(SECRET, header, BODY + b" ", now=T)
    assert not signing.verify("whsec_other", header, BODY, now=T)
    assert not signing.verify(SECRET, f"t={T + 1},v1={V1}", BODY, now=T)
    assert not signing.verify(SECRET, f"v1={V1}", BODY, now=T)
    assert not signing.verify(SECRET, "", BODY, now=T)
    assert signing.verify(SECRET, f"t={T},v1=00,v1={V1}", BODY, now=T)  # any v1 may match (a rolled secret)


@given(body=st.binary(max_size=256), t=st.integers(min_value=0, max_value=2**33), secret=st.text(min_size=1))
def test_sign_then_verify(body, t, secret):
    assert signing.verify(secret, signing.sign(secret, body, t), body, now=t)
