from datetime import timedelta

from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse

from backoffice.selectors import market_overview
from market.index import last_completed_day
from market.selectors import IndexSeries, price_index_series

INDEX_DAYS = 30
# The price index chart's drawing area inside its SVG, in pixels.
PLOT_LEFT, PLOT_WIDTH, PLOT_TOP, PLOT_HEIGHT = 70, 630, 10, 180
LEGEND_ROW = 18
COLOURS = ["#417690", "#ba2121", "#5b8e3e", "#c77c02", "#7a4fa3", "#2b8a9e", "#8c564b", "#555555"]


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
    last = last_completed_day()
    first = last - timedelta(days=INDEX_DAYS - 1)
    context = {
        **admin.site.each_context(request),
        "title": "Market overview",
        "segments": segments,
        "bars": bars,
        "chart_height": max(len(bars) * 46, 46),
        "index_chart": index_chart(price_index_series(first=first, last=last), first=first, days=INDEX_DAYS),
    }
    return TemplateResponse(request, "admin/market_overview.html", context)


def index_chart(series: list[IndexSeries], *, first, days: int) -> dict:
    """The daily VWAP of each GPU model as SVG lines over ``days`` days from ``first``: a line
    through consecutive traded days, a dot with its figures on each, the price scale on the left."""
    prices = [price for entry in series for _, price, _ in entry.days]
    if not prices:
        return {"lines": [], "first": first, "last": first + timedelta(days=days - 1)}
    low, high = min(prices), max(prices)

    def x(day) -> float:
        return round(PLOT_LEFT + PLOT_WIDTH * (day - first).days / max(days - 1, 1), 1)

    def y(price) -> float:
        share = (price - low) / (high - low) if high > low else 0.5
        return round(PLOT_TOP + PLOT_HEIGHT * (1 - float(share)), 1)

    lines = []
    for index, entry in enumerate(series):
        runs: list[list[tuple[float, float]]] = []
        previous = None
        for day, price, _ in entry.days:
            if previous is None or (day - previous).days > 1:
                runs.append([])
            runs[-1].append((x(day), y(price)))
            previous = day
        lines.append(
            {
                "gpu_model": entry.gpu_model,
                "colour": COLOURS[index % len(COLOURS)],
                "runs": [" ".join(f"{px},{py}" for px, py in run) for run in runs if len(run) > 1],
                "points": [
                    {"x": x(day), "y": y(price), "day": day, "vwap": price, "volume": volume}
                    for day, price, volume in entry.days
                ],
                "legend_y": PLOT_TOP + PLOT_HEIGHT + 40 + index * LEGEND_ROW,
            }
        )
    return {
        "lines": lines,
        "first": first,
        "last": first + timedelta(days=days - 1),
        "low": low,
        "high": high,
        "low_y": y(low),
        "high_y": y(high),
        "axis_y": PLOT_TOP + PLOT_HEIGHT,
        "date_y": PLOT_TOP + PLOT_HEIGHT + 16,
        "left": PLOT_LEFT,
        "right": PLOT_LEFT + PLOT_WIDTH,
        "height": PLOT_TOP + PLOT_HEIGHT + 40 + len(lines) * LEGEND_ROW,
    }
