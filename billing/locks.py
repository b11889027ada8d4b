"""Advisory lock keys, defined once.

The services take them, and the migrations hand them to the database code that takes them
too (as trigger or function arguments), so no key is written twice. This module imports
nothing, so a migration can import it without loading the models.
"""

# ("bill", 1): usage ingestion and the usage-totals trigger take it shared, a month close
# (and a rebuild of the totals) alone.
USAGE_LOCK = (0x62696C6C, 1)
