"""An allocation only takes a node that is in service, checked on the latest committed row.

A sale reads its free nodes in its statement's snapshot: a booking that waited for its
listing's lock while a failure report cordoned one of those nodes would still see it in
service. This trigger reads the nodes again, in a snapshot of its own taken after the new
allocations are written, and refuses the statement (an integrity error, which the booking
and the matching engine take for a node sold meanwhile: they choose again) if any node is
out of service. Statement-level, over the statement's new rows: one query per sale.
"""

from django.db import migrations

FORWARD = """
CREATE FUNCTION broker_allocation_node_in_service() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    refused bigint;
BEGIN
    SELECT n.id INTO refused
      FROM added a JOIN marketplace_node n ON n.id = a.node_id
     WHERE n.status <> 'in_service' AND a.ends_at > a.starts_at
     LIMIT 1;
    IF refused IS NOT NULL THEN
        RAISE EXCEPTION 'node % is out of service: it cannot be allocated', refused
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER allocation_node_in_service AFTER INSERT ON broker_allocation
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION broker_allocation_node_in_service();
"""

BACKWARD = """
DROP TRIGGER allocation_node_in_service ON broker_allocation;
DROP FUNCTION broker_allocation_node_in_service();
"""


class Migration(migrations.Migration):
    dependencies = [("broker", "0009_handover_sla_incidents")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
