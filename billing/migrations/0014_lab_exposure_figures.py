from django.db import migrations


def set_figures(apps, schema_editor):
    # The labs' exposure figures, from its definition (billing.credit.LAB_EXPOSURE): raw SQL
    # over the tables, so the historical models are not needed.
    from billing.credit import lab_exposures_refresh

    lab_exposures_refresh()


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0013_usage_node_key_name"),
        ("broker", "0006_credit_limits"),
        ("marketplace", "0010_organization_exposure_figures"),
    ]

    operations = [migrations.RunPython(set_figures, migrations.RunPython.noop)]
