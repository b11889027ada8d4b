"""The API's JSON request bodies: parsed once, with a bound on nesting."""

import json

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

# No request of this API nests deeper than a few levels (a usage batch is 3); a deeply nested
# body is refused before anything walks it recursively.
MAX_JSON_DEPTH = 32


class BodyRefused(ValueError):
    """The body is not JSON this API accepts."""


def json_depth_within(value: object, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` nests no deeper than ``limit`` containers (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return True


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def parse_json_body(body: bytes | str) -> object:
    """The body's JSON value; BodyRefused if it is not strict JSON (NaN and Infinity are not) or
    nests deeper than MAX_JSON_DEPTH."""
    try:
        value = json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        raise BodyRefused(f"JSON nested deeper than {MAX_JSON_DEPTH} levels.")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BodyRefused(f"JSON parse error: {exc}")
    if not json_depth_within(value):
        raise BodyRefused(f"JSON nested deeper than {MAX_JSON_DEPTH} levels.")
    return value


class BoundedJSONParser(JSONParser):
    """DRF's JSON parser, refusing bodies nested deeper than MAX_JSON_DEPTH with a 400."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", "utf-8")
        try:
            return parse_json_body(stream.read().decode(encoding))
        except LookupError:
            # Django takes any codec Python knows for the Content-Type's charset, and some are
            # no text encoding (hex, rot13, zlib): bytes.decode() refuses them.
            raise ParseError(f"The charset {encoding!r} is not a text encoding; send JSON in UTF-8.")
        except UnicodeError as exc:  # UnicodeDecodeError, and the codecs that fail otherwise (punycode)
            raise ParseError(f"JSON parse error: {exc}")
        except BodyRefused as exc:
            raise ParseError(str(exc))
