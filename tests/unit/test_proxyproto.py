"""The PROXY protocol v1/v2 header parser (pure function of bytes)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postroom.net.proxyproto import (
    V1_MAX,
    V2_MAX_PAYLOAD,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    is_trusted,
    parse_header,
    parse_networks,
)


def v2(command: int = 1, family: int = 0x11, payload: bytes | None = None) -> bytes:
    if payload is None:
        payload = bytes([198, 51, 100, 7]) + bytes([192, 0, 2, 1]) + struct.pack("!HH", 40000, 25)
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(payload)) \
        + payload


def test_v1_tcp4_gives_source_and_destination_and_length():
    data = b"PROXY TCP4 198.51.100.7 192.0.2.1 40000 25\r\nEHLO x\r\n"
    header = parse_header(data)
    assert header == ProxyHeader(version=1, length=44, source=("198.51.100.7", 40000),
                                 destination=("192.0.2.1", 25))
    assert data[header.length:] == b"EHLO x\r\n"


def test_v1_tcp6_is_parsed():
    header = parse_header(b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 25\r\n")
    assert header is not None and header.source == ("2001:db8::7", 40000)


def test_v1_unknown_keeps_the_connection_addresses():
    header = parse_header(b"PROXY UNKNOWN ffff:f...f:ffff 1 2\r\n")
    assert header is not None and header.source is None


def test_v1_partial_header_needs_more_bytes():
    assert parse_header(b"PROX") is None
    assert parse_header(b"PROXY TCP4 198.51.100.7 192.0") is None
    assert parse_header(b"PROXY TCP4 198.51.100.7 192.0.2.1 40000 25\r") is None


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 198.51.100.7 192.0.2.1 40000 25\n",          # bare LF
    b"PROXY TCP4 198.51.100.7  192.0.2.1 40000 25\r\n",       # double space
    b"PROXY TCP4 2001:db8::7 192.0.2.1 40000 25\r\n",          # family mismatch
    b"PROXY TCP4 198.51.100.07 192.0.2.1 40000 25\r\n",        # leading zero in address
    b"PROXY TCP4 198.51.100.7 192.0.2.1 040000 25\r\n",        # leading zero in port
    b"PROXY TCP4 198.51.100.7 192.0.2.1 70000 25\r\n",         # port out of range
    b"PROXY UDP4 198.51.100.7 192.0.2.1 40000 25\r\n",         # not TCP
    b"proxy TCP4 198.51.100.7 192.0.2.1 40000 25\r\n",         # case
    b"EHLO client.example\r\n",                                # no header at all
])
def test_v1_malformed_headers_are_refused(line):
    with pytest.raises(ProxyHeaderError):
        parse_header(line)


def test_v1_over_107_bytes_without_crlf_is_refused():
    with pytest.raises(ProxyHeaderError):
        parse_header(b"PROXY UNKNOWN " + b"x" * V1_MAX)


def test_v2_tcp4_gives_addresses_and_length():
    data = v2() + b"EHLO x\r\n"
    header = parse_header(data)
    assert header == ProxyHeader(version=2, length=28, source=("198.51.100.7", 40000),
                                 destination=("192.0.2.1", 25))


def test_v2_tcp6_gives_addresses():
    src = bytes.fromhex("20010db8000000000000000000000007")
    dst = bytes.fromhex("20010db8000000000000000000000001")
    header = parse_header(v2(family=0x21, payload=src + dst + struct.pack("!HH", 1, 25)))
    assert header is not None and header.source == ("2001:db8::7", 1)


def test_v2_tlvs_after_the_addresses_are_skipped():
    payload = bytes([198, 51, 100, 7, 192, 0, 2, 1]) + struct.pack("!HH", 1, 25) + b"\x04\x00\x01x"
    header = parse_header(v2(payload=payload) + b"rest")
    assert header is not None and header.length == 16 + len(payload)


def test_v2_local_command_keeps_the_connection_addresses():
    header = parse_header(v2(command=0, family=0, payload=b""))
    assert header == ProxyHeader(version=2, length=16)


def test_v2_partial_header_needs_more_bytes():
    full = v2()
    for cut in (1, 5, 12, 15, 20):
        assert parse_header(full[:cut]) is None


@pytest.mark.parametrize("data", [
    V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12,        # version 1 in a v2 header
    V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\x00" * 12,        # unknown command
    V2_SIGNATURE + b"\x21\x12\x00\x0c" + b"\x00" * 12,        # UDP
    V2_SIGNATURE + b"\x21\x31\x00\xd8" + b"\x00" * 216,       # unix sockets
    V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x00" * 4,         # address block too short
    b"\r\n\r\n\x00\r\nQUIT\r",                                 # bad signature
])
def test_v2_malformed_headers_are_refused(data):
    with pytest.raises(ProxyHeaderError):
        parse_header(data)


def test_v2_length_over_the_bound_is_refused_before_reading_it():
    data = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", V2_MAX_PAYLOAD + 1)
    with pytest.raises(ProxyHeaderError):
        parse_header(data)


@given(st.binary(max_size=200))
def test_parser_never_raises_anything_but_its_own_error(data):
    try:
        header = parse_header(data)
    except ProxyHeaderError:
        return
    assert header is None or 0 < header.length <= len(data)


def test_trusted_networks_match_addresses_and_cidrs():
    nets = parse_networks(["10.0.0.0/8", "::1", "192.0.2.5"])
    assert is_trusted("10.1.2.3", nets)
    assert is_trusted("::1", nets)
    assert is_trusted("::ffff:192.0.2.5", nets)
    assert not is_trusted("192.0.2.6", nets)
    assert not is_trusted("not an ip", nets)
