"""The SMTP server state machine over StringTransport: commands, extensions, limits, timeouts."""

from __future__ import annotations

from postroom.smtp import replies as R
from postroom.smtp.grammar import Address
from postroom.smtp.options import ServerOptions
from postroom.smtp.server import SMTPServerFactory
from tests.unit.test_smtp_support import FakeServerTLS, Harness, RecordingPolicy

MESSAGE = b"Subject: hi\r\n\r\nHello\r\n"


def test_ehlo_advertises_the_extensions() -> None:
    lines = Harness().greet()
    assert lines[0] == "250-mx.test Hello client.test"
    keywords = [line[4:] for line in lines[1:]]
    for keyword in ("PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING",
                    "DSN", "STARTTLS", f"SIZE {35 * 1024 * 1024}"):
        assert keyword in keywords


def test_auth_is_not_advertised_before_tls() -> None:
    assert not any("AUTH" in line for line in Harness().greet())


def test_auth_is_advertised_before_tls_when_the_policy_allows_plaintext() -> None:
    harness = Harness(RecordingPolicy(plaintext_auth=True))
    assert "250 AUTH PLAIN LOGIN SCRAM-SHA-256" in harness.greet()


def test_implicit_tls_offers_auth_and_not_starttls() -> None:
    lines = Harness(implicit_tls=True).greet()
    assert "250 AUTH PLAIN LOGIN SCRAM-SHA-256" in lines
    assert not any("STARTTLS" in line for line in lines)


def test_starttls_is_not_advertised_without_a_certificate() -> None:
    assert not any("STARTTLS" in line for line in Harness(tls=False).greet())


def test_helo_gets_a_single_line_without_extensions() -> None:
    harness = Harness()
    harness.take()
    harness.send(b"HELO client.test\r\n")
    assert harness.take() == b"250 mx.test Hello client.test\r\n"


def test_a_whole_transaction_is_delivered_with_the_queue_id_in_the_reply() -> None:
    harness = Harness()
    harness.start_transaction("a@example.org", "b@example.net", "c@example.net")
    harness.send(b"DATA\r\n")
    assert harness.replies() == ["354 End data with <CR><LF>.<CR><LF>"]
    harness.send(MESSAGE + b".\r\n")
    assert harness.replies() == ["250 2.0.0 Queued as Q0001"]
    envelope, message = harness.policy.delivered[0]
    assert message == MESSAGE
    assert envelope.mail_from == Address("a", "example.org")
    assert [str(r.address) for r in envelope.recipients] == ["b@example.net", "c@example.net"]


def test_null_sender_is_passed_as_none() -> None:
    harness = Harness()
    harness.greet()
    harness.send(b"MAIL FROM:<>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n" + MESSAGE + b".\r\n")
    assert harness.codes() == [250, 250, 354, 250]
    assert harness.policy.delivered[0][0].mail_from is None


def test_dsn_parameters_are_kept_in_the_envelope() -> None:
    harness = Harness()
    harness.greet()
    harness.send(b"MAIL FROM:<a@example.org> RET=HDRS ENVID=id+2B1\r\n"
                 b"RCPT TO:<b@example.net> NOTIFY=FAILURE,DELAY ORCPT=rfc822;b@example.net\r\n"
                 b"DATA\r\n" + MESSAGE + b".\r\n")
    envelope = harness.policy.delivered[0][0]
    assert (envelope.mail_params.ret, envelope.mail_params.envid) == ("HDRS", "id+1")
    assert envelope.recipients[0].params.notify == ("FAILURE", "DELAY")
    assert envelope.recipients[0].params.orcpt == ("rfc822", "b@example.net")


def test_mail_before_ehlo_is_503() -> None:
    harness = Harness()
    harness.take()
    harness.send(b"MAIL FROM:<a@example.org>\r\n")
    assert harness.replies() == ["503 5.5.1 Send HELO/EHLO first"]


def test_rcpt_before_mail_is_503() -> None:
    harness = Harness()
    harness.greet()
    harness.send(b"RCPT TO:<b@example.net>\r\n")
    assert harness.codes() == [503]


def test_data_without_recipients_is_554() -> None:
    harness = Harness()
    harness.greet()
    harness.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<nobody@example.net>\r\nDATA\r\n")
    assert harness.codes() == [250, 550, 554]


def test_nested_mail_is_503() -> None:
    harness = Harness()
    harness.start_transaction()
    harness.send(b"MAIL FROM:<a@example.org>\r\n")
    assert harness.replies() == [R.NESTED_MAIL.render().decode().strip()]


def test_refused_sender_starts_no_transaction() -> None:
    harness = Harness()
    harness.greet()
    harness.send(b"MAIL FROM:<x@refused.test>\r\nRCPT TO:<b@example.net>\r\n")
    assert harness.codes() == [550, 503]


def test_parameters_after_helo_are_555() -> None:
    harness = Harness()
    harness.take()
    harness.send(b"HELO c.test\r\nMAIL FROM:<a@example.org> SIZE=10\r\n")
    assert harness.codes() == [250, 555]


def test_size_over_the_limit_is_552_at_mail() -> None:
    harness = Harness(max_message_size=1000)
    harness.greet()
    harness.send(b"MAIL FROM:<a@example.org> SIZE=1001\r\n")
    assert harness.replies() == ["552 5.3.4 Message size exceeds fixed maximum message size"]


def test_huge_size_is_552_not_a_crash() -> None:
    harness = Harness()
    harness.greet()
    harness.send(b"MAIL FROM:<a@example.org> SIZE=99999999999999999999\r\n")
    assert harness.codes() == [552]


def test_message_over_the_size_limit_is_552_and_not_delivered() -> None:
    harness = Harness(max_message_size=100)
    harness.start_transaction()
    harness.send(b"DATA\r\n" + b"0123456789\r\n" * 50 + b".\r\n")
    assert harness.codes() == [354, 552]
    assert harness.policy.delivered == []


def test_binarymime_is_refused_because_it_is_not_offered() -> None:
    harness = Harness()
    harness.greet()
    harness.send(b"MAIL FROM:<a@example.org> BODY=BINARYMIME\r\n")
    assert harness.codes() == [555]


def test_too_many_recipients_is_452() -> None:
    harness = Harness(max_recipients=2, max_errors=100)
    harness.greet()
    harness.send(b"MAIL FROM:<a@example.org>\r\n" + b"RCPT TO:<b@example.net>\r\n" * 3)
    assert harness.replies()[-1] == "452 4.5.3 Too many recipients"


def test_rset_clears_the_transaction() -> None:
    harness = Harness()
    harness.start_transaction()
    harness.send(b"RSET\r\nDATA\r\n")
    assert harness.codes() == [250, 503]


def test_noop_vrfy_help_and_expn() -> None:
    harness = Harness()
    harness.greet()
    harness.send(b"NOOP\r\nVRFY alice\r\nHELP\r\nEXPN list\r\n")
    assert harness.codes() == [250, 252, 214, 502]


def test_quit_says_bye_and_closes() -> None:
    harness = Harness()
    harness.greet()
    harness.send(b"QUIT\r\n")
    assert harness.replies() == ["221 2.0.0 Bye"] and harness.closed


def test_unknown_command_is_500_with_enhanced_code() -> None:
    harness = Harness()
    harness.greet()
    harness.send(b"FROB\r\n")
    assert harness.replies() == ["500 5.5.2 Syntax error, command unrecognized"]


def test_too_many_errors_ends_the_session_with_421() -> None:
    harness = Harness(max_errors=3)
    harness.greet()
    harness.send(b"FROB\r\n" * 5)
    assert harness.codes() == [500, 500, 500, 421]
    assert harness.closed


def test_too_many_junk_commands_ends_the_session() -> None:
    harness = Harness(max_junk_commands=3)
    harness.greet()
    harness.send(b"NOOP\r\n" * 5)
    assert harness.codes() == [250, 250, 250, 421]


def test_command_line_longer_than_any_limit_is_refused_and_closes() -> None:
    harness = Harness()
    harness.greet()
    harness.send(b"NOOP " + b"x" * 20000)
    assert harness.codes()[0] == 500 and harness.closed


def test_nul_in_a_command_is_500() -> None:
    harness = Harness()
    harness.greet()
    harness.send(b"NOOP \x00\x00\r\nNOOP\r\n")
    assert harness.codes() == [500, 250]


def test_idle_timeout_sends_421_and_closes() -> None:
    harness = Harness(command_timeout=30)
    harness.greet()
    harness.clock.advance(31)
    assert harness.replies() == ["421 4.4.2 Timeout exceeded, closing connection"]
    assert harness.closed


def test_slowloris_partial_line_does_not_reset_the_timer() -> None:
    harness = Harness(command_timeout=30)
    harness.greet()
    for _ in range(40):
        harness.send(b"N")
        harness.clock.advance(1)
    assert harness.closed
    assert harness.replies() == ["421 4.4.2 Timeout exceeded, closing connection"]


def test_data_timeout_applies_while_receiving_data() -> None:
    harness = Harness(command_timeout=10, data_timeout=100)
    harness.start_transaction()
    harness.send(b"DATA\r\npart\r\n")
    harness.clock.advance(50)
    assert not harness.closed
    harness.clock.advance(51)
    assert harness.closed and harness.policy.delivered == []


def test_timer_does_not_fire_while_the_policy_is_thinking() -> None:
    policy = RecordingPolicy(delay=40)
    harness = Harness(policy, command_timeout=30)
    harness.clock.advance(40)
    harness.take()
    harness.send(b"EHLO c.test\r\n")
    harness.clock.advance(35)
    assert not harness.closed
    harness.clock.advance(5)
    assert harness.codes() == [250]


def test_connections_per_ip_are_limited_with_421() -> None:
    policy = RecordingPolicy()
    from twisted.internet.task import Clock

    factory = SMTPServerFactory(policy, ServerOptions(hostname="mx.test",
                                                      max_connections_per_ip=2),
                                tls=FakeServerTLS(), clock=Clock())
    first, second = Harness(factory=factory), Harness(factory=factory)
    third = Harness(factory=factory)
    assert third.replies() == [R.TOO_MANY_CONNECTIONS.render().decode().strip()]
    assert third.closed and not first.closed and not second.closed
    first.lose()
    assert Harness(factory=factory).codes() == [220]


def test_connections_from_other_addresses_are_not_counted_together() -> None:
    from twisted.internet.task import Clock

    factory = SMTPServerFactory(RecordingPolicy(), ServerOptions(
        hostname="mx.test", max_connections_per_ip=1), clock=Clock())
    Harness(factory=factory, peer_ip="192.0.2.1")
    assert Harness(factory=factory, peer_ip="192.0.2.2").codes() == [220]


def test_connection_lost_is_reported_to_the_policy_and_uncounted() -> None:
    harness = Harness()
    harness.lose()
    assert harness.policy.closed_sessions == [harness.protocol.session]
    assert not harness.factory.per_address.open


def test_policy_exception_gives_451_and_the_session_continues() -> None:
    harness = Harness()
    harness.greet()
    harness.policy.fail_in = "mail_from"
    harness.send(b"MAIL FROM:<a@example.org>\r\nNOOP\r\n")
    wire = harness.take()
    assert wire == b"451 4.3.0 Local error in processing, try again later\r\n250 2.0.0 OK\r\n"
    assert b"Traceback" not in wire and b"boom" not in wire


def test_deliver_exception_gives_451_and_resets_the_transaction() -> None:
    harness = Harness()
    harness.start_transaction()
    harness.policy.fail_in = "deliver"
    harness.send(b"DATA\r\n" + MESSAGE + b".\r\nRCPT TO:<b@example.net>\r\n")
    assert harness.codes() == [354, 451, 503]


def test_internal_error_in_handler_gives_451_without_traceback() -> None:
    harness = Harness()
    harness.greet()

    async def broken(command: object) -> None:
        raise ValueError("internal detail")

    harness.protocol.smtp_NOOP = broken  # type: ignore[method-assign]
    harness.send(b"NOOP\r\nRSET\r\n")
    wire = harness.take()
    assert wire.startswith(b"451 4.3.0") and b"internal detail" not in wire
    assert wire.endswith(b"250 2.0.0 Reset state\r\n")


def test_data_pipelined_after_the_end_of_data_is_processed_in_order() -> None:
    harness = Harness()
    harness.start_transaction()
    harness.send(b"DATA\r\n" + MESSAGE + b".\r\nQUIT\r\n")
    assert harness.codes() == [354, 250, 221]


def test_smtputf8_transaction_accepts_utf8_recipient() -> None:
    harness = Harness()
    harness.greet()
    harness.send("MAIL FROM:<jörg@example.org> SMTPUTF8\r\n"
                 "RCPT TO:<пользователь@пример.example>\r\n".encode())
    assert harness.codes() == [250, 250]


def test_connect_hook_failure_closes_with_421() -> None:
    policy = RecordingPolicy()
    policy.fail_in = "connect"
    harness = Harness(policy)
    assert harness.replies() == ["421 4.3.0 Local error in processing, closing connection"]
    assert harness.closed


def test_peer_that_does_not_close_after_421_is_aborted() -> None:
    harness = Harness(command_timeout=10)
    harness.clock.advance(11)
    assert harness.closed and not harness.transport.aborted
    harness.clock.advance(5)
    assert harness.transport.aborted


def test_policy_can_refuse_the_connection_at_greeting() -> None:
    class Refusing(RecordingPolicy):
        def connect(self, session: object) -> R.Reply:  # type: ignore[override]
            return R.Reply(554, "5.7.1", "No SMTP service here")

    harness = Harness(Refusing())
    assert harness.replies() == ["554 5.7.1 No SMTP service here"] and harness.closed


def test_options_come_from_settings() -> None:
    from postroom.config import load_settings

    settings = load_settings({"POSTROOM_HOSTNAME": "mx.example", "POSTROOM_MAX_RECIPIENTS": "7",
                              "POSTROOM_SMTP_COMMAND_TIMEOUT": "30s"})
    options = ServerOptions.from_settings(settings, max_junk_commands=5)
    assert (options.hostname, options.max_recipients, options.command_timeout,
            options.max_junk_commands) == ("mx.example", 7, 30.0, 5)
