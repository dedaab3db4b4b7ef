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


def test_loopback_includes_ipv4_mapped_and_excludes_garbage():
    from postroom.peers import is_loopback

    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("192.0.2.1") and not is_loopback("not an ip")
