"""Bounded hypothesis fuzzing of the POP3 wire parsers: only their documented errors, ever."""

from __future__ import annotations

import base64

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postroom_pop3 import wire

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
popish = st.lists(st.sampled_from([b"USER", b"PASS", b"RETR", b"TOP", b" ", b"\t", b"1",
                                   b"-1", b"\xff", b"\r", b"\n", b"\0", b"9" * 30, b"a"]),
                  max_size=12).map(b"".join)


@FUZZ
@given(line=st.one_of(popish, st.binary(max_size=600)))
def test_parse_command_returns_a_command_or_raises_its_syntax_error(line: bytes) -> None:
    try:
        command = wire.parse_command(line)
    except wire.CommandSyntaxError:
        return
    assert isinstance(command.words(), list)


@FUZZ
@given(text=st.one_of(popish, st.binary(max_size=40)))
def test_parse_number_is_none_or_a_non_negative_int(text: bytes) -> None:
    value = wire.parse_number(text)
    assert value is None or (isinstance(value, int) and value >= 0)


@FUZZ
@given(raw=st.one_of(st.binary(max_size=300),
                     st.lists(st.sampled_from([b"\0", b"user", b"\xff", b"pw", b"=", b"@"]),
                              max_size=10).map(lambda parts: base64.b64encode(b"".join(parts)))))
def test_sasl_plain_decoding_returns_three_strings_or_raises_its_error(raw: bytes) -> None:
    try:
        result = wire.decode_sasl_plain(raw)
    except wire.SaslError:
        return
    assert len(result) == 3 and all(isinstance(part, str) for part in result)


@FUZZ
@given(message=st.binary(max_size=800), lines=st.integers(min_value=0, max_value=50))
def test_top_is_a_prefix_of_the_crlf_message(message: bytes, lines: int) -> None:
    whole = wire.to_crlf(message)
    head = wire.top(whole, lines)
    assert whole.startswith(head)
