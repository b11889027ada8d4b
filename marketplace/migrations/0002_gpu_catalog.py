from django.db import migrations

CATALOG = [
    # slug, name, vendor, memory GB, peak dense BF16 TFLOPS
    ("a100-sxm-80gb", "A100 SXM 80GB", "NVIDIA", 80, 312),
    ("h100-sxm-80gb", "H100 SXM 80GB", "NVIDIA", 80, 989),
    ("h200-sxm-141gb", "H200 SXM 141GB", "NVIDIA", 141, 989),
    ("b200", "B200", "NVIDIA", 192, 2250),
    ("gb200", "GB200", "NVIDIA", 186, 2500),
    ("mi300x", "MI300X", "AMD", 192, 1307),
]


def load_catalog(apps, schema_editor):
    GpuModel = apps.get_model("marketplace", "GpuModel")
    for slug, name, vendor, memory_gb, tflops in CATALOG:
        GpuModel.objects.update_or_create(
            slug=slug, defaults={"name": name, "vendor": vendor, "memory_gb": memory_gb, "bf16_tflops": tflops}
        )


class Migration(migrations.Migration):
    dependencies = [("marketplace", "0001_initial")]
    operations = [migrations.RunPython(load_catalog, migrations.RunPython.noop)]
