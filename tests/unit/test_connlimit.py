"""The per-address connection limit shared by the listeners."""

from postroom.connlimit import PerAddressLimit


def test_connections_past_the_limit_are_refused_per_address():
    limit = PerAddressLimit(2)
    assert limit.acquire("192.0.2.1") and limit.acquire("192.0.2.1")
    assert not limit.acquire("192.0.2.1")
    assert limit.acquire("192.0.2.2")


def test_a_released_connection_makes_room_and_leaves_no_residue():
    limit = PerAddressLimit(1)
    assert limit.acquire("a")
    limit.release("a")
    assert limit.acquire("a")
    limit.release("a")
    assert not limit.open
