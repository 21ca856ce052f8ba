from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="Order",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True,
                                           serialize=False, verbose_name="ID")),
                ("item", models.CharField(max_length=100)),
                ("quantity", models.PositiveIntegerField(default=1)),
                ("state", models.CharField(choices=[("new", "new"), ("paid", "paid"),
                                                    ("shipped", "shipped")],
                                           default="new", max_length=10)),
                ("version", models.PositiveIntegerField(default=0)),
            ],
        ),
    ]
