"""What the WSGI application must check before Django builds a request."""

import codecs
import json
from collections.abc import Callable, Iterable

from django.core.handlers.wsgi import get_bytes_from_wsgi
from django.http import QueryDict
from django.utils.http import parse_header_parameters

from core.errors import error_body
from core.middleware import API_PREFIX

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]


def charset_breaks_request(environ: dict) -> str | None:
    """The Content-Type's charset if Django cannot build the request with it, else None.

    Django takes as the request's encoding any codec Python knows, and decodes the query string
    with it while it builds the request, before any middleware runs. A codec that is no text
    encoding (hex, rot13, zlib) raises LookupError there, and one that fails other than with
    UnicodeDecodeError (punycode) raises UnicodeError: either is a 500. A charset Python does not
    know Django ignores, and so does this.
    """
    charset = parse_header_parameters(environ.get("CONTENT_TYPE", ""))[1].get("charset")
    try:
        codecs.lookup(charset or "")
    except LookupError:
        return None
    try:
        b"".decode(charset)  # refuses a codec that is no text encoding, even with nothing to decode
        QueryDict(get_bytes_from_wsgi(environ, "QUERY_STRING", ""), encoding=charset)
    except (LookupError, UnicodeError):
        return charset
    return None


def refuse_unusable_charsets(application: WsgiApp) -> WsgiApp:
    """Answer 400 to a request whose charset Django cannot build it with (in the API's error
    shape under /api/), instead of the 500 Django's request would raise."""

    def guarded(environ: dict, start_response: Callable) -> Iterable[bytes]:
        charset = charset_breaks_request(environ)
        if charset is None:
            return application(environ, start_response)
        message = f"The Content-Type's charset {charset!r} is not a text encoding this server can read; use UTF-8."
        if get_bytes_from_wsgi(environ, "PATH_INFO", "").startswith(API_PREFIX.encode()):
            body, content_type = json.dumps(error_body("malformed_request", message)).encode(), "application/json"
        else:
            body, content_type = message.encode(), "text/plain; charset=utf-8"
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        start_response("400 Bad Request", [*headers, ("X-Content-Type-Options", "nosniff")])
        return [body]

    return guarded
