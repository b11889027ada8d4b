from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse

from backoffice.selectors import market_overview


def market_overview_view(request: HttpRequest):
    segments = market_overview()
    scale = max([max(s.listed_gpu_hours, s.sold_gpu_hours) for s in segments] + [1])
    bars = [
        {
            "segment": segment,
            "listed_width": round(400 * segment.listed_gpu_hours / scale, 1),
            "sold_width": round(400 * segment.sold_gpu_hours / scale, 1),
            "y": index * 46,
        }
        for index, segment in enumerate(segments)
    ]
    context = {
        **admin.site.each_context(request),
        "title": "Market overview",
        "segments": segments,
        "bars": bars,
        "chart_height": max(len(bars) * 46, 46),
    }
    return TemplateResponse(request, "admin/market_overview.html", context)
