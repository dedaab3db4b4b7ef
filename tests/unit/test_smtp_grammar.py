"""The SMTP command grammar: RFC 5321 paths, ESMTP parameters, limits, and a fuzz test."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.smtp import replies as R
from postroom.smtp.grammar import (
    Address,
    Auth,
    Bdat,
    Data,
    Hello,
    Mail,
    Noop,
    ParseError,
    Quit,
    Rcpt,
    Rset,
    StartTLS,
    Unimplemented,
    Vrfy,
    decode_xtext,
    encode_xtext,
    parse_command,
)


def refused(line: bytes, **kwargs: object) -> int:
    with pytest.raises(ParseError) as info:
        parse_command(line, **kwargs)  # type: ignore[arg-type]
    return info.value.reply.code


def test_ehlo_with_domain() -> None:
    assert parse_command(b"EHLO client.example.org") == Hello("EHLO", "client.example.org")


def test_helo_verb_is_case_insensitive() -> None:
    assert parse_command(b"helo client") == Hello("HELO", "client")


def test_ehlo_with_ipv4_literal() -> None:
    assert parse_command(b"EHLO [192.0.2.1]").name == "[192.0.2.1]"  # type: ignore[union-attr]


def test_ehlo_with_ipv6_literal() -> None:
    assert parse_command(b"EHLO [IPv6:2001:db8::1]").name == "[IPv6:2001:db8::1]"  # type: ignore[union-attr]


def test_ehlo_with_bad_ipv4_literal_is_501() -> None:
    assert refused(b"EHLO [300.1.1.1]") == 501


def test_ehlo_without_argument_is_501() -> None:
    assert refused(b"EHLO") == 501


def test_ehlo_with_underscore_is_501() -> None:
    assert refused(b"EHLO bad_name.example") == 501


def test_mail_from_simple_path() -> None:
    command = parse_command(b"MAIL FROM:<alice@example.org>")
    assert command == Mail(Address("alice", "example.org"), command.params)  # type: ignore[union-attr]


def test_mail_from_null_path() -> None:
    command = parse_command(b"MAIL FROM:<>")
    assert isinstance(command, Mail) and command.path is None


def test_mail_from_source_route_is_accepted_and_dropped() -> None:
    command = parse_command(b"MAIL FROM:<@relay.example,@other.example:alice@example.org>")
    assert isinstance(command, Mail) and command.path == Address("alice", "example.org")


def test_mail_from_quoted_local_part_keeps_quotes() -> None:
    command = parse_command(b'MAIL FROM:<"john doe>x"@example.org>')
    assert isinstance(command, Mail) and command.path == Address('"john doe>x"', "example.org")


def test_mail_from_address_literal_domain() -> None:
    command = parse_command(b"MAIL FROM:<a@[192.0.2.9]>")
    assert isinstance(command, Mail) and command.path == Address("a", "[192.0.2.9]")


def test_mail_from_with_space_after_colon_is_tolerated() -> None:
    assert isinstance(parse_command(b"MAIL FROM: <a@b.example>"), Mail)


def test_mail_from_without_angle_brackets_is_501() -> None:
    assert refused(b"MAIL FROM:alice@example.org") == 501


def test_mail_from_with_two_dots_in_local_part_is_501() -> None:
    assert refused(b"MAIL FROM:<a..b@example.org>") == 501


def test_mail_from_with_trailing_dot_in_domain_is_501() -> None:
    assert refused(b"MAIL FROM:<a@example.org.>") == 501


def test_mail_from_without_from_keyword_is_501() -> None:
    assert refused(b"MAIL <a@example.org>") == 501


def test_mail_parameters_are_parsed() -> None:
    command = parse_command(b"MAIL FROM:<a@b.example> SIZE=1000 BODY=8bitmime RET=HDRS "
                            b"ENVID=QQ+2Bx AUTH=<>")
    assert isinstance(command, Mail)
    params = command.params
    assert (params.size, params.body, params.ret, params.envid, params.auth) == (
        1000, "8BITMIME", "HDRS", "QQ+x", "<>")


def test_unknown_mail_parameter_is_555() -> None:
    assert refused(b"MAIL FROM:<a@b.example> FOO=bar") == 555


def test_duplicate_mail_parameter_is_501() -> None:
    assert refused(b"MAIL FROM:<a@b.example> SIZE=1 SIZE=2") == 501


def test_non_numeric_size_is_501() -> None:
    assert refused(b"MAIL FROM:<a@b.example> SIZE=big") == 501


def test_huge_size_is_parsed_as_a_number() -> None:
    command = parse_command(b"MAIL FROM:<a@b.example> SIZE=99999999999999999999")
    assert isinstance(command, Mail) and command.params.size == 99999999999999999999


def test_bad_body_value_is_501() -> None:
    assert refused(b"MAIL FROM:<a@b.example> BODY=9BIT") == 501


def test_bad_xtext_in_envid_is_501() -> None:
    assert refused(b"MAIL FROM:<a@b.example> ENVID=a+zz") == 501


def test_utf8_sender_without_smtputf8_is_553() -> None:
    assert refused("MAIL FROM:<jürgen@example.org>".encode()) == 553


def test_utf8_sender_with_smtputf8() -> None:
    command = parse_command("MAIL FROM:<jürgen@bücher.example> SMTPUTF8".encode())
    assert isinstance(command, Mail) and command.params.smtputf8
    assert command.path == Address("jürgen", "bücher.example")


def test_utf8_recipient_needs_smtputf8_transaction() -> None:
    line = "RCPT TO:<用户@例子.example>".encode()
    assert refused(line) == 553
    assert isinstance(parse_command(line, smtputf8=True), Rcpt)


def test_invalid_utf8_is_500() -> None:
    assert refused(b"MAIL FROM:<\xff@example.org> SMTPUTF8") == 500


def test_rcpt_to_postmaster_without_domain() -> None:
    command = parse_command(b"RCPT TO:<Postmaster>")
    assert isinstance(command, Rcpt) and command.path.is_postmaster and command.path.domain == ""


def test_rcpt_null_path_is_501() -> None:
    assert refused(b"RCPT TO:<>") == 501


def test_rcpt_dsn_parameters() -> None:
    command = parse_command(b"RCPT TO:<b@c.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40c")
    assert isinstance(command, Rcpt)
    assert command.params.notify == ("SUCCESS", "FAILURE")
    assert command.params.orcpt == ("rfc822", "b@c")


def test_notify_never_cannot_be_combined() -> None:
    assert refused(b"RCPT TO:<b@c.example> NOTIFY=NEVER,DELAY") == 501


def test_orcpt_without_type_is_501() -> None:
    assert refused(b"RCPT TO:<b@c.example> ORCPT=b@c") == 501


def test_local_part_over_64_octets_is_501() -> None:
    assert refused(b"RCPT TO:<" + b"a" * 65 + b"@example.org>") == 501


def test_path_over_256_octets_is_501() -> None:
    domain = b".".join([b"d" * 60] * 4)
    assert refused(b"RCPT TO:<" + b"a" * 60 + b"@" + domain + b">") == 501


def test_label_over_63_octets_is_501() -> None:
    assert refused(b"RCPT TO:<a@" + b"d" * 64 + b".example>") == 501


def test_command_line_over_512_octets_is_500() -> None:
    assert refused(b"NOOP " + b"x" * 510) == 500


def test_mail_line_may_use_the_parameter_line_limit() -> None:
    line = b"MAIL FROM:<a@b.example> ENVID=" + b"x" * 100 + b" " + b"RET=FULL" + b" " * 400
    assert isinstance(parse_command(line), Mail)


def test_nul_byte_in_command_is_500() -> None:
    assert refused(b"NOOP \x00") == 500


def test_bare_lf_inside_command_line_is_500() -> None:
    assert refused(b"NOOP a\nMAIL FROM:<x@y.example>") == 500


def test_unknown_verb_is_500() -> None:
    assert refused(b"FROB") == 500


def test_data_with_argument_is_501() -> None:
    assert refused(b"DATA now") == 501


def test_no_argument_commands() -> None:
    assert [parse_command(v) for v in (b"DATA", b"RSET", b"QUIT", b"STARTTLS")] == [
        Data(), Rset(), Quit(), StartTLS()]


def test_noop_vrfy_and_unimplemented() -> None:
    assert parse_command(b"NOOP hi") == Noop("hi")
    assert parse_command(b"VRFY alice") == Vrfy("alice")
    assert parse_command(b"EXPN list") == Unimplemented("EXPN")


def test_bdat_with_last() -> None:
    assert parse_command(b"BDAT 1000 LAST") == Bdat(1000, True)
    assert parse_command(b"BDAT 0") == Bdat(0, False)


@pytest.mark.parametrize("line", [b"BDAT", b"BDAT -1", b"BDAT 12x", b"BDAT 1 FIRST",
                                  b"BDAT 9999999999999999999"])
def test_bdat_with_a_bad_size_is_501(line: bytes) -> None:
    assert refused(line) == 501


def test_auth_with_initial_response() -> None:
    assert parse_command(b"AUTH plain AGFsaWNlAHB3") == Auth("PLAIN", "AGFsaWNlAHB3")
    assert parse_command(b"AUTH LOGIN") == Auth("LOGIN", None)


def test_auth_line_may_be_12288_octets() -> None:
    assert isinstance(parse_command(b"AUTH PLAIN " + b"A" * 12000), Auth)


def test_xtext_round_trip() -> None:
    assert decode_xtext(encode_xtext("a+b=c d")) == "a+b=c d"


def test_parse_errors_carry_the_reply() -> None:
    with pytest.raises(ParseError) as info:
        parse_command(b"MAIL FROM:<a@b.example> X-FOO")
    assert info.value.reply == R.UNKNOWN_PARAMETER


_VERBS = st.sampled_from([b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"BDAT",
                          b"AUTH", b"NOOP", b"VRFY", b"RSET", b"STARTTLS", b"mail from:<"])


@settings(max_examples=400, deadline=None)
@given(verb=_VERBS, tail=st.binary(max_size=600), smtputf8=st.booleans())
def test_fuzz_parser_returns_a_command_or_a_coded_parse_error(
        verb: bytes, tail: bytes, smtputf8: bool) -> None:
    try:
        parse_command(verb + tail, smtputf8=smtputf8)
    except ParseError as error:
        assert error.reply.code in (500, 501, 502, 553, 555)
        assert error.reply.enhanced


@settings(max_examples=300, deadline=None)
@given(local=st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}", fullmatch=True),
       labels=st.lists(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True),
                       min_size=1, max_size=4))
def test_fuzz_valid_paths_parse_back_to_the_same_address(local: str, labels: list[str]) -> None:
    domain = ".".join(labels)
    command = parse_command(f"RCPT TO:<{local}@{domain}>".encode())
    assert isinstance(command, Rcpt) and command.path == Address(local, domain)
