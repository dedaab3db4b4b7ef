"""Which addresses the relay may connect to (postroom.net.destinations): internal ones refused."""

from __future__ import annotations

import pytest

from postroom.net.destinations import STRICT, DestinationPolicy

INTERNAL = [
    "0.0.0.0", "0.1.2.3", "127.0.0.1", "127.255.255.254", "10.0.0.1", "10.255.255.255",
    "172.16.0.1", "172.31.255.255", "192.168.1.1", "100.64.0.1", "100.127.255.254",
    "169.254.169.254", "224.0.0.1", "239.255.255.255", "240.0.0.1", "255.255.255.255",
    "192.0.0.8", "192.0.2.1", "198.18.0.1",
    "::", "::1", "fc00::1", "fd12:3456::1", "fe80::1", "fe80::1%eth0", "fec0::1", "ff02::1",
    "ff0e::1", "2001:db8::25", "::127.0.0.1",
    # IPv4-mapped, NAT64 and 6to4 forms of internal IPv4 addresses
    "::ffff:127.0.0.1", "::ffff:10.1.2.3", "::ffff:169.254.169.254", "::ffff:0.0.0.0",
    "64:ff9b::a00:1", "64:ff9b::7f00:1", "2002:7f00:1::1", "2002:c0a8:101::1",
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "172.32.0.1", "100.128.0.1", "11.0.0.1",
          "2606:4700::1111", "2a00:1450:4001:80b::201b", "::ffff:8.8.8.8", "64:ff9b::808:808",
          "2002:808:808::1"]


@pytest.mark.parametrize("address", INTERNAL)
def test_internal_addresses_are_refused_by_default(address):
    assert not STRICT.permits(address)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_permitted(address):
    assert STRICT.permits(address)


@pytest.mark.parametrize("address", ["", "mx.example.org", "127.0.0.1.nip.io", "1.2.3",
                                     "999.1.1.1", "127.0.0.1/8", "::ffff:127.0.0.1:25"])
def test_what_is_not_an_address_is_refused(address):
    assert not STRICT.permits(address)


def test_an_allowed_network_permits_its_internal_addresses_only():
    policy = DestinationPolicy.allowing(["127.0.0.0/8", "fd00:1::/64", ""])
    assert policy.permits("127.0.0.2") and policy.permits("fd00:1::25")
    assert not policy.permits("10.0.0.1") and not policy.permits("fd00:2::25")
    assert not policy.permits("::1")  # IPv6 loopback is another network
    assert policy.permits("8.8.8.8")


def test_mapped_addresses_match_the_ipv4_allow_list_and_mapped_networks_mean_ipv4():
    assert DestinationPolicy.allowing(["127.0.0.0/8"]).permits("::ffff:127.0.0.3")
    mapped = DestinationPolicy.allowing(["::ffff:10.0.0.0/104"])
    assert mapped.permits("10.9.8.7") and mapped.permits("::ffff:10.9.8.7")
    assert not mapped.permits("192.168.0.1") and not mapped.permits("::ffff:192.168.0.1")


def test_a_bad_allowed_network_is_a_value_error():
    with pytest.raises(ValueError):
        DestinationPolicy.allowing(["10.0.0.0/33"])
