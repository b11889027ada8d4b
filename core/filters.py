"""Query filters of the API's lists."""

from django_filters.rest_framework import DjangoFilterBackend

from core.serializers import refuse_unclear_parameters


class StrictFilterBackend(DjangoFilterBackend):
    """django-filter's backend, except that a filter sent with no value (``?status=``) or twice is a
    400 naming it, as any other value outside the filter's choices is: django-filter alone ignores
    the first and reads the last value of the second, which the schema (an enum, say) does not allow."""

    def get_filterset(self, request, queryset, view):
        filterset = super().get_filterset(request, queryset, view)
        if filterset is not None:
            refuse_unclear_parameters(request.query_params, filterset.filters)
        return filterset
