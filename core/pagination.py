from collections.abc import Callable

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.utils.urls import replace_query_param

from core.serializers import query_integer, refuse_unclear_parameters

MAX_PAGE = 1_000_000


class StandardPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_size(self, request: Request) -> int:
        """``page_size`` if given, from 1 to ``max_page_size``; anything else is a 400, never
        silently the default."""
        refuse_unclear_parameters(request.query_params, [self.page_size_query_param])
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        size = query_integer(raw)
        if size is None or not 1 <= size <= self.max_page_size:
            raise ValidationError({self.page_size_query_param: [f"A page size from 1 to {self.max_page_size}."]})
        return size

    def get_page_number(self, request: Request, paginator=None) -> int:
        """``page`` if given, a plain number from 1 to ``MAX_PAGE``; anything else is a 400. DRF
        alone reads ``page=`` as the first page and ``page=last`` as the last, which the schema's
        integer does not allow."""
        refuse_unclear_parameters(request.query_params, [self.page_query_param])
        number = query_integer(request.query_params.get(self.page_query_param, "1"))
        if number is None or not 1 <= number <= MAX_PAGE:
            raise ValidationError({self.page_query_param: ["A page number from 1."]})
        return number

    def get_schema_operation_parameters(self, view) -> list[dict]:
        parameters = super().get_schema_operation_parameters(view)
        bounds = {self.page_query_param: MAX_PAGE, self.page_size_query_param: self.max_page_size}
        for parameter in parameters:
            parameter["schema"] |= {"minimum": 1, "maximum": bounds[parameter["name"]]}
        if parameters:
            parameters[-1]["description"] += f" From 1 to {self.max_page_size}; {self.page_size} when not given."
        return parameters

    def fetched_page(self, request: Request, fetch: Callable[..., tuple[list, int]]) -> tuple[list, dict]:
        """A page from a selector that returns ``(rows, total)`` for ``limit``/``offset`` in one go,
        with the same ``count``/``next``/``previous`` as every other list."""
        number, size = self.get_page_number(request), self.get_page_size(request)
        rows, total = fetch(limit=size, offset=(number - 1) * size)
        url = request.build_absolute_uri()
        return rows, {
            "count": total,
            "next": replace_query_param(url, self.page_query_param, number + 1) if number * size < total else None,
            "previous": replace_query_param(url, self.page_query_param, number - 1) if number > 1 else None,
        }
