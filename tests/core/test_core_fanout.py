"""Hub: who subscribes to what, and delivery to them."""

from __future__ import annotations

from tidings.core.cursor import Position
from tidings.core.fanout import Hub
from tidings.core.message import Message

EPOCH = "k2j4h5g6"


def message(channel: str, seq: int) -> Message:
    return Message(channel, Position(EPOCH, seq), b"%d" % seq, 1_000 + seq)


class Recorder:
    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        self.name = name
        self.log = log

    def deliver(self, message: Message) -> None:
        self.log.append((self.name, message.id))


class Gathering(Recorder):
    """A subscriber that stands for ``readers`` readers."""

    readers = 1


def test_publish_without_subscribers_delivers_nothing() -> None:
    hub = Hub()
    assert hub.publish(message("a", 1)) == 0
    assert hub.delivered == 0
    assert hub.channels() == 0


def test_delivery_goes_to_the_channel_subscribers_in_subscription_order() -> None:
    hub = Hub()
    log: list[tuple[str, str]] = []
    first, second, other = Recorder("first", log), Recorder("second", log), Recorder("other", log)
    hub.subscribe("a", first)
    hub.subscribe("a", second)
    hub.subscribe("b", other)
    assert hub.publish(message("a", 1)) == 2
    assert hub.publish(message("a", 2)) == 2
    assert hub.publish(message("b", 1)) == 1
    assert log == [
        ("first", f"{EPOCH}-1"), ("second", f"{EPOCH}-1"),
        ("first", f"{EPOCH}-2"), ("second", f"{EPOCH}-2"),
        ("other", f"{EPOCH}-1"),
    ]
    assert hub.delivered == 5


def test_counts() -> None:
    hub = Hub()
    a, b = Recorder("a", []), Recorder("b", [])
    hub.subscribe("x", a)
    hub.subscribe("x", b)
    hub.subscribe("y", a)
    assert hub.subscribers("x") == 2
    assert hub.subscribers("y") == 1
    assert hub.subscribers("z") == 0
    assert hub.channels() == 2
    hub.unsubscribe("x", a)
    assert hub.subscribers("x") == 1
    hub.unsubscribe("x", b)
    assert hub.subscribers("x") == 0
    assert hub.channels() == 1  # empty channels are forgotten
    hub.unsubscribe("y", a)
    assert hub.channels() == 0


def test_a_subscriber_that_stands_for_several_readers_counts_as_them() -> None:
    """One subscription answering many long polls (server/gathering.py) tells the hub how
    many readers it stands for; the busiest channels and the counts see them."""
    hub = Hub()
    one, many = Recorder("one", []), Gathering("many", [])
    hub.subscribe("x", one)
    hub.gather("y", many)
    many.readers = 5
    assert hub.subscribers("y") == 5 and hub.subscribers("x") == 1
    assert hub.busiest(2) == [("y", 5), ("x", 1)]
    many.readers = 3  # (asked when counted: nothing to tell the hub)
    assert hub.subscribers("y") == 3
    many.readers = 1
    assert sorted(hub.busiest(2)) == [("x", 1), ("y", 1)]
    assert hub.publish(message("y", 1)) == 1  # delivered once: it answers its readers
    assert many.log == [("many", f"{EPOCH}-1")]
    hub.unsubscribe("y", many)
    assert hub.subscribers("y") == 0 and hub.channels() == 1


def test_subscribing_twice_delivers_once() -> None:
    hub = Hub()
    log: list[tuple[str, str]] = []
    a = Recorder("a", log)
    hub.subscribe("x", a)
    hub.subscribe("x", a)
    assert hub.subscribers("x") == 1
    assert hub.publish(message("x", 1)) == 1
    assert log == [("a", f"{EPOCH}-1")]


def test_unsubscribe_unknown_is_harmless() -> None:
    hub = Hub()
    a, b = Recorder("a", []), Recorder("b", [])
    hub.unsubscribe("nowhere", a)
    hub.subscribe("x", a)
    hub.unsubscribe("x", b)
    assert hub.subscribers("x") == 1


def test_unsubscribed_subscriber_gets_nothing_more() -> None:
    hub = Hub()
    log: list[tuple[str, str]] = []
    a, b = Recorder("a", log), Recorder("b", log)
    hub.subscribe("x", a)
    hub.subscribe("x", b)
    hub.publish(message("x", 1))
    hub.unsubscribe("x", a)
    hub.publish(message("x", 2))
    assert log == [("a", f"{EPOCH}-1"), ("b", f"{EPOCH}-1"), ("b", f"{EPOCH}-2")]


class Quitter:
    """Unsubscribes itself from inside deliver(), as a cut-off connection does."""

    def __init__(self, hub: Hub, log: list[tuple[str, str]]) -> None:
        self.hub = hub
        self.log = log

    def deliver(self, message: Message) -> None:
        self.log.append(("quitter", message.id))
        self.hub.unsubscribe(message.channel, self)


def test_subscriber_unsubscribing_itself_during_delivery() -> None:
    hub = Hub()
    log: list[tuple[str, str]] = []
    before, after = Recorder("before", log), Recorder("after", log)
    hub.subscribe("x", before)
    hub.subscribe("x", Quitter(hub, log))
    hub.subscribe("x", after)
    assert hub.publish(message("x", 1)) == 3
    assert log == [("before", f"{EPOCH}-1"), ("quitter", f"{EPOCH}-1"), ("after", f"{EPOCH}-1")]
    assert hub.subscribers("x") == 2
    log.clear()
    assert hub.publish(message("x", 2)) == 2
    assert log == [("before", f"{EPOCH}-2"), ("after", f"{EPOCH}-2")]


def test_last_subscriber_quitting_forgets_the_channel() -> None:
    hub = Hub()
    log: list[tuple[str, str]] = []
    hub.subscribe("x", Quitter(hub, log))
    assert hub.publish(message("x", 1)) == 1
    assert hub.channels() == 0
    assert hub.publish(message("x", 2)) == 0


def test_subscriber_added_during_delivery_waits_for_the_next_message() -> None:
    hub = Hub()
    log: list[tuple[str, str]] = []
    late = Recorder("late", log)

    class Inviter:
        def deliver(self, message: Message) -> None:
            log.append(("inviter", message.id))
            hub.subscribe(message.channel, late)

    hub.subscribe("x", Inviter())
    hub.publish(message("x", 1))
    hub.publish(message("x", 2))
    assert log == [("inviter", f"{EPOCH}-1"), ("inviter", f"{EPOCH}-2"), ("late", f"{EPOCH}-2")]
