"""Every saved order is published on the channel ``orders``, once its transaction commits.

``transaction.on_commit``: subscribers never hear of an order that was rolled back.
If tidings cannot be reached, the order is still saved and the failure is logged (for
messages that must never be lost, publish from the database instead:
tidings' PostgreSQL bridge, docs/bridge.md).
"""

import logging

import tidings
from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from orders.models import Order
from orders.realtime import publisher

logger = logging.getLogger("orders")


@receiver(post_save, sender=Order)
def publish_order(sender: type[Order], instance: Order, created: bool, **kwargs: object) -> None:
    data = {"event": "created" if created else "updated", "order": instance.as_json()}
    # The same key for a retried publish of this save: tidings stores it once.
    key = f"order-{instance.pk}-v{instance.version}"

    def publish() -> None:
        try:
            message_id = publisher().publish("orders", data, idempotency_key=key)
        except tidings.ClientError as exc:  # unreachable, or refused (a wrong API key)
            logger.error("order %s: not published to tidings: %s", instance.pk, exc)
            return
        logger.info("order %s published as %s", instance.pk, message_id)

    transaction.on_commit(publish, robust=True)
