"""/.well-known/ answers outside the console: ACME HTTP-01 and the MTA-STS policy.

Both are public and plain text. ``/.well-known/acme-challenge/{token}`` answers
the key authorization the renewer (postroom.ops.acme) published in the database,
so the CA may reach any web replica (on port 80: POSTROOM_WEB_LISTEN, which the
operator maps 80 to). ``/.well-known/mta-sts.txt`` answers the policy of the
local domain named by the Host header ``mta-sts.<domain>`` (RFC 8461 section
3.3) when its mode is not ``none``, over HTTPS only.
"""

from __future__ import annotations

import re
from typing import Any

from postroom.mailauth.mtasts import policy_text
from postroom.store.acme import challenge_answer
from postroom.store.mtasts import get_setting

ACME_PREFIX = "/.well-known/acme-challenge/"
MTA_STS_PATH = "/.well-known/mta-sts.txt"
ACME_ROUTE = ACME_PREFIX + "{token}"
# base64url, as RFC 8555 section 8.3 makes tokens; anything else is not ours
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")
_HOST = re.compile(r"[a-z0-9.-]{1,253}")
TEXT = "text/plain; charset=utf-8"


async def answer(app: Any, request: Any, path: str) -> tuple[int, bytes, str] | None:
    """(status, body, route label) for a well-known path we serve, else None."""
    if path.startswith(ACME_PREFIX):
        token = path[len(ACME_PREFIX):]
        found = None
        if _TOKEN.fullmatch(token):
            found = await app.database.run(challenge_answer, token)
        if found is None:
            return 404, b"no such challenge\n", ACME_ROUTE
        return 200, found.encode("ascii"), ACME_ROUTE
    if path == MTA_STS_PATH:
        status, body = await _mta_sts(app, request)
        return status, body, MTA_STS_PATH
    return None


async def _mta_sts(app: Any, request: Any) -> tuple[int, bytes]:
    raw = request.getHeader(b"host") or b""
    host = (raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)).strip().lower()
    host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if not host.startswith("mta-sts.") or not _HOST.fullmatch(host) or not app.secure(request):
        return 404, b"no MTA-STS policy here\n"
    setting = await app.database.run(get_setting, host[len("mta-sts."):].rstrip("."))
    if setting is None or setting.mode == "none":
        return 404, b"no MTA-STS policy here\n"
    return 200, policy_text(setting.mode, [app.settings.hostname]).encode("ascii")

