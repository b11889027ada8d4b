"""Market data: the daily price index (market.index)."""
