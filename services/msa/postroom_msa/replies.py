"""The MSA's own SMTP replies, as named constants shared by code and tests."""

from __future__ import annotations

from postroom.smtp import replies as R
from postroom.smtp.replies import Reply

SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address not owned by the authenticated user")
FROM_NOT_OWNED = Reply(553, "5.7.1", "From: header address not owned by the authenticated user")
NEED_ONE_FROM = Reply(550, "5.6.0", "Message must have exactly one From: header field")
NO_SUCH_USER = Reply(550, "5.1.1", "No such user here")
BAD_RECIPIENT = Reply(550, "5.1.3", "Recipient must be a full address in a domain name")
MESSAGE_LIMIT = Reply(450, "4.7.1", "Hourly message limit reached, try again later")
RECIPIENT_LIMIT = Reply(450, "4.7.1", "Daily recipient limit reached, try again later")
LOGIN_DELAYED = R.AUTH_TEMPORARY_FAILURE.with_text("Too many failed logins, try again later")
# the limiter's store (Redis) is away: fail closed, without blaming the user
AUTH_UNAVAILABLE = R.AUTH_TEMPORARY_FAILURE
# the main password of an account with two-factor login on (postroom.store.apppasswords)
APP_PASSWORD_REQUIRED = R.AUTH_FAILED.with_text(
    "Application password required: two-factor login is on for this account, "
    "create an app password in the web console")
TRY_LATER = R.LOCAL_ERROR


# POSTROOM_MSA_VIRUS_SCAN with clamd configured: the scanner could not be asked
VIRUS_SCANNER_UNAVAILABLE = Reply(451, "4.7.0",
                                  "Temporary failure (virus scanner unavailable), try again later")


def virus_found(signature: str) -> Reply:
    """The refusal of a submitted message clamd found a virus in, naming the signature."""
    return Reply(554, "5.7.1", f"Message rejected: virus found: {signature}")


def queued(queue_id: str) -> Reply:
    """The final 250 after DATA, naming the queue id every later log line carries."""
    return R.MESSAGE_ACCEPTED.with_text(f"Message accepted, queued as {queue_id}")
