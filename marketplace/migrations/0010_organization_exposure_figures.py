from django.db import migrations, models


class Migration(migrations.Migration):
    # The lab's row keeps its exposure figures (billing.credit) instead of a version number:
    # billing's migration 0014 sets them from their definition.

    dependencies = [
        ("marketplace", "0009_organization_credit_limit"),
    ]

    operations = [
        migrations.RemoveField(model_name="organization", name="exposure_version"),
        migrations.AddField(
            model_name="organization",
            name="exposure_committed",
            field=models.DecimalField(decimal_places=4, default=0, editable=False, max_digits=24),
        ),
        migrations.AddField(
            model_name="organization",
            name="exposure_metered",
            field=models.DecimalField(decimal_places=4, default=0, editable=False, max_digits=24),
        ),
        migrations.AddField(
            model_name="organization",
            name="exposure_unpaid",
            field=models.DecimalField(decimal_places=4, default=0, editable=False, max_digits=24),
        ),
    ]
