from django.db import models


class Order(models.Model):
    STATES = [("new", "new"), ("paid", "paid"), ("shipped", "shipped")]

    item = models.CharField(max_length=100)
    quantity = models.PositiveIntegerField(default=1)
    state = models.CharField(max_length=10, choices=STATES, default="new")
    #: Counts the saves: each publish's idempotency key (orders/signals.py).
    version = models.PositiveIntegerField(default=0)

    def save(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.version += 1
        super().save(*args, **kwargs)

    def as_json(self) -> dict:
        return {"id": self.pk, "item": self.item, "quantity": self.quantity,
                "state": self.state, "version": self.version}
