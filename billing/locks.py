"""Advisory lock keys, defined once.

The services take them, and the migrations hand them to the database code that takes them
too (as trigger or function arguments), so no key is written twice. This module imports
nothing, so a migration can import it without loading the models.
"""

# ("bill", 1): usage ingestion and the usage-totals trigger take it shared, a month close
# (and a rebuild of the totals) alone.
USAGE_LOCK = (0x62696C6C, 1)

# ("usgc", stripe): the capacity check of a contract's usage takes it until commit, with the
# contract's stripe as second key. Stripes bound the locks one batch holds (PostgreSQL's lock
# table is shared and finite); two contracts of one stripe merely wait for each other.
USAGE_CONTRACT_LOCK = 0x75736763
USAGE_CONTRACT_LOCK_STRIPES = 64
