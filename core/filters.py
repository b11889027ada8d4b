"""Query filters of the API's lists."""

from django_filters.rest_framework import DjangoFilterBackend

from core.serializers import refuse_empty_parameters


class StrictFilterBackend(DjangoFilterBackend):
    """django-filter's backend, except that a filter sent with no value (``?status=``) is a 400
    naming it, as any other value outside the filter's choices is: django-filter alone ignores it
    and answers the whole list, which the schema (an enum, say) does not allow."""

    def get_filterset(self, request, queryset, view):
        filterset = super().get_filterset(request, queryset, view)
        if filterset is not None:
            refuse_empty_parameters(request.query_params, filterset.filters)
        return filterset
