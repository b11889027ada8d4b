"""Events are paged by an opaque cursor: a page of the newest events stays the same page while
new ones are published, and a client following ``next`` never sees one twice."""

from base64 import b64decode
from urllib import parse

from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import Cursor, CursorPagination

from core.serializers import refuse_unclear_parameters
from events.api.serializers import MAX_PAGE_SIZE

BAD_CURSOR = "Not a cursor this API gave: pass the cursor of a `next` or `previous` link as it is."


class EventCursorPagination(CursorPagination):
    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = MAX_PAGE_SIZE

    def decode_cursor(self, request) -> Cursor | None:
        """DRF's cursor, except that a malformed one is a 400 naming the parameter, and its
        position must be an id (DRF would pass any text on to the query), and ``cursor=`` is not
        taken for the first page."""
        refuse_unclear_parameters(request.query_params, [self.cursor_query_param])
        encoded = request.query_params.get(self.cursor_query_param)
        if encoded is None:
            return None
        try:
            cursor = super().decode_cursor(request)
            querystring = b64decode(encoded.encode("ascii")).decode("ascii")
            position = parse.parse_qs(querystring, keep_blank_values=True).get("p", [None])[0]
        except (NotFound, ValueError, UnicodeError):
            raise ValidationError({self.cursor_query_param: [BAD_CURSOR]}) from None
        if cursor.position is not None and not (position.isascii() and position.isdigit() and len(position) <= 18):
            raise ValidationError({self.cursor_query_param: [BAD_CURSOR]})
        return cursor
