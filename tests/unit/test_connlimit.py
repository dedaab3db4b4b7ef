"""The per-address connection limit shared by the listeners."""

from postroom.net.connlimit import PerAddressLimit


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
    from postroom.net.peers import is_loopback

    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("192.0.2.1") and not is_loopback("not an ip")


def test_client_key_is_the_ipv4_address_or_the_ipv6_slash_64():
    from postroom.net.peers import client_key

    assert client_key("192.0.2.1") == "192.0.2.1"
    assert client_key("2001:db8:1:2:a:b:c:d") == "2001:db8:1:2::/64"
    assert client_key("2001:DB8:1:2::ffff") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key("not an address") == "not an address"


def test_client_key_of_ipv4_mapped_ipv6_is_the_ipv4_address():
    from postroom.net.peers import client_key

    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("::ffff:c000:201") == "192.0.2.1"


def test_ipv6_clients_of_one_slash_64_share_the_connection_limit():
    limit = PerAddressLimit(2)
    assert limit.acquire("2001:db8:1:2::1") and limit.acquire("2001:db8:1:2:ffff::2")
    assert not limit.acquire("2001:db8:1:2:dead:beef:0:3")
    assert limit.acquire("2001:db8:1:3::1")  # another /64 is another client
    limit.release("2001:db8:1:2::1")
    assert limit.acquire("2001:db8:1:2::99")


def test_ipv4_mapped_connections_count_with_the_ipv4_address():
    limit = PerAddressLimit(1)
    assert limit.acquire("192.0.2.7")
    assert not limit.acquire("::ffff:192.0.2.7")
    limit.release("::ffff:192.0.2.7")
    assert not limit.open
