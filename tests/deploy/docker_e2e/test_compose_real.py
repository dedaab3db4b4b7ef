"""The shipped compose.yaml, really run: `docker compose up` on our own dockerd.

Images come from no registry (scripts/docker-e2e-images.sh: debootstrap + docker import,
PostgreSQL and Redis from Debian's packages, Postroom built by deploy/Dockerfile from
wheels made on the host). The only override (compose.e2e.yaml) swaps image names and
adds a DNS stub for the Internet the test network does not have (and clamd's test
signature file for the filter profile). Then, as an operator would: up with
`--profile filter` (rspamd and clamd from Debian's packages), every healthcheck green,
EICAR refused with 554, GTUBE refused or filed in Junk, a clean message with
X-Spamd-Result, migrate done, a domain and a user through the `cli`
service, mail to the published 25 and 587 (STARTTLS + AUTH) read back over 993,
`--scale mda=3` with each message delivered exactly once, `logs mta` showing only the
mta, an mda killed mid-flow with nothing lost, `down -v`. Then proxy mode, a one-node
Swarm, and the client-address settings of docs/deploy-docker.md section 4 on a second
dockerd with Docker's own NAT in a private network namespace (netns.py). Timings are
printed.

`make compose-e2e` runs this module alone. A daemon that cannot start fails the test:
nothing here skips.
"""

from __future__ import annotations

import imaplib
import json
import os
import re
import secrets
import signal
import smtplib
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.deploy.compose import DEPLOY_DOC, docs_blocks
from tests.deploy.docker_e2e.harness import (
    COMPOSE_SUBNET,
    DNS_ADDRESS,
    DOCKER_CLI,
    IMAGES_SCRIPT,
    Compose,
    Dockerd,
    E2EError,
    Timings,
    copy_project,
    run,
)
from tests.deploy.docker_e2e.netns import (
    CLIENT_V4,
    CLIENT_V6,
    HOST_V4,
    HOST_V6,
    NatHost,
    dockerd_major,
)
from tests.support.dovecot import hash_password
from tests.support.ports import free_port
from tests.support.scanners import EICAR, GTUBE

pytestmark = [pytest.mark.slow, pytest.mark.compose, pytest.mark.timeout(1500)]

IMAGE = "postroom-e2e/postroom:test"
DOMAIN = "example.org"
USER = f"alice@{DOMAIN}"
PASSWORD = "e2e-" + secrets.token_hex(12)
# container port -> PUBLISH_* variable of compose.yaml
PUBLISHED = {25: "PUBLISH_SMTP", 465: "PUBLISH_SUBMISSIONS", 587: "PUBLISH_SUBMISSION",
             2525: "PUBLISH_SUBMISSION_ALT", 110: "PUBLISH_POP3", 995: "PUBLISH_POP3S",
             143: "PUBLISH_IMAP", 993: "PUBLISH_IMAPS"}


def tls_client() -> ssl.SSLContext:
    # the stack's own self-signed certificate (compose's `tls` service made it)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def write_env(project: Path, ports: dict[int, int] | None, proxy: bool = False,
              filter: bool = False, extra: dict[str, str] | None = None) -> None:
    """.env from the shipped example, with this run's passwords, ports and DNS stub.

    ``ports`` None: the example's own PUBLISH_* (and no DNS stub), for the daemon in a
    network namespace of its own (netns.py). ``extra``: more lines, e.g. the documented
    IPv6 listeners.

    ``proxy``: the example's proxy mode, HAProxy holding the ports (on loopback) and the
    listeners publishing bare container ports (dockerd's --ip keeps them on loopback).
    ``filter``: the filter profile's scanners configured as compose.yaml's comment says, and
    clamd's test signatures written where compose.e2e.yaml mounts them."""
    publish: dict[str, str] = {}
    if ports is not None and proxy:
        publish = {var: str(port) for port, var in PUBLISHED.items()}
        publish.update({f"PROXY_{var}": f"127.0.0.1:{ports[port]}:{port}"
                        for port, var in PUBLISHED.items()})
    elif ports is not None:
        publish = {var: f"127.0.0.1:{ports[port]}:{port}" for port, var in PUBLISHED.items()}
    password = secrets.token_hex(16)
    values = {
        "POSTGRES_PASSWORD": password,
        "POSTROOM_DATABASE_URL": f"postgresql://postroom:{password}@postgres:5432/postroom",
        # nothing listens beyond the host's loopback
        **publish,
        **(extra or {}),
    }
    if ports is not None:
        values["POSTROOM_DNS_SERVERS"] = DNS_ADDRESS
    if filter:
        values.update(POSTROOM_RSPAMD_URL="http://rspamd:11333",
                      POSTROOM_CLAMD_ADDRESS="tcp:clamav:3310")
        signatures = project / "e2e-clamav" / "postroom-test.ndb"
        signatures.parent.mkdir(exist_ok=True)
        signatures.write_text(f"Postroom.Test.EICAR:0:*:{EICAR.hex()}\n")
        signatures.chmod(0o644)
    lines = []
    for line in (project / "deploy" / "postroom.env.example").read_text().splitlines():
        key = line.partition("=")[0]
        if key in values:
            line = f"{key}={values.pop(key)}"
        lines.append(line)
    lines += [f"{key}={value}" for key, value in values.items()]
    (project / ".env").write_text("\n".join(lines) + "\n")
    secret_dir = project / "secrets"
    secret_dir.mkdir(exist_ok=True)
    key_file = secret_dir / "postroom_secret_key"
    key_file.unlink(missing_ok=True)
    run([str(REPO_VENV_POSTROOM), "secret-key", "generate", str(key_file)])
    os.chown(key_file, 10025, 10025)


REPO_VENV_POSTROOM = Path(__file__).resolve().parents[3] / ".venv" / "bin" / "postroom"


def message(subject: str, msgid: str, sender: str = "bob@remote.test") -> str:
    return (f"From: {sender}\r\nTo: {USER}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{msgid}>\r\n\r\nbody of {subject}\r\n")


def send_plain(port: int, msgid: str, subject: str = "inbound") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.sendmail("bob@remote.test", [USER], message(subject, msgid))


def send_submission(port: int, msgid: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.starttls(context=tls_client())
        smtp.login(USER, PASSWORD)
        smtp.sendmail(USER, [USER], message("submitted", msgid, sender=USER))


def count_by_msgid(port: int, msgids: list[str]) -> dict[str, int]:
    counts = {}
    imap = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=tls_client(), timeout=30)
    try:
        imap.login(USER, PASSWORD)
        imap.select("INBOX", readonly=True)
        for msgid in msgids:
            status, data = imap.search(None, "HEADER", "Message-ID", f"<{msgid}>")
            assert status == "OK", data
            counts[msgid] = len(data[0].split())
    finally:
        imap.logout()
    return counts


def wait_delivered(port: int, msgids: list[str], timeout: float = 120) -> None:
    """Every message in INBOX; then, after a pause, each still exactly once."""
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        counts = count_by_msgid(port, msgids)
        if all(counts.values()):
            break
        time.sleep(1)
    else:
        missing = [m for m, n in counts.items() if not n]
        raise E2EError(f"{len(missing)} of {len(msgids)} messages never arrived: {missing[:5]}")
    time.sleep(3)
    counts = count_by_msgid(port, msgids)
    twice = {m: n for m, n in counts.items() if n != 1}
    assert not twice, f"delivered other than exactly once: {twice}"


@pytest.fixture(scope="module")
def timings() -> Iterator[Timings]:
    t = Timings()
    yield t
    print("\n" + t.summary(), flush=True)


@pytest.fixture(scope="module")
def daemon(timings: Timings) -> Iterator[Dockerd]:
    with tempfile.TemporaryDirectory(prefix="postroom-e2e-") as tmp:
        d = Dockerd(Path(tmp))
        try:
            with timings.phase("dockerd start"):
                d.start()
            yield d
        finally:
            with timings.phase("clean up and stop dockerd"):
                d.stop()


@pytest.fixture(scope="module")
def project(daemon: Dockerd, timings: Timings) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="postroom-e2e-project-") as tmp:
        path = copy_project(Path(tmp) / "postroom")
        with timings.phase("images (debootstrap/import/build; cached)"):
            run(["bash", str(IMAGES_SCRIPT), "images", str(path)], env=daemon.env, timeout=1200)
        with timings.phase("filter images: rspamd, clamav (cached)"):
            run(["bash", str(IMAGES_SCRIPT), "filter-images"], env=daemon.env, timeout=1200)
        yield path


@pytest.fixture(scope="module")
def ports() -> dict[int, int]:
    return {port: free_port() for port in PUBLISHED}


def test_compose_up_mail_round_trip_scale_and_crash(daemon: Dockerd, project: Path,
                                                   ports: dict[int, int], timings: Timings):
    write_env(project, ports, filter=True)
    compose = Compose(daemon, project, "pre2e", IMAGE, profiles=["filter"])
    try:
        _compose_scenario(compose, daemon, ports, timings)
    except BaseException:
        print("--- docker compose logs (tail) on failure\n" + compose.logs_tail(60), flush=True)
        raise
    finally:
        with timings.phase("compose down -v"):
            compose("down", "-v", "--remove-orphans", "-t", "10", check=False, timeout=180)


def _compose_scenario(compose: Compose, daemon: Dockerd, ports: dict[int, int],
                      timings: Timings) -> None:
    with timings.phase("compose up -d (no certificate yet)"):
        assert not (compose.dir / "tls" / "fullchain.pem").exists()
        compose("up", "-d", "--no-build", timeout=300)
    with timings.phase("healthchecks green, migrate + tls done"):
        containers = compose.wait_ready()
    services = {c["Service"] for c in containers}
    assert {"postgres", "redis", "migrate", "tls", "dmarc", "mta", "msa", "mda", "pop3",
            "imap", "rspamd", "clamav"} <= services, services
    assert "cli" not in services, "the cli service (profile tools) must not start with up"
    # the `tls` one-shot made a self-signed pair the services' user can read
    assert (compose.dir / "tls" / "fullchain.pem").stat().st_uid == 10025
    assert (compose.dir / "tls" / "privkey.pem").stat().st_mode & 0o777 == 0o600

    with timings.phase("filter: rspamd and clamd answer"):
        _wait_scanners(compose)

    with timings.phase("cli: domain add + user add"):
        compose("run", "--rm", "-T", "cli", "domain", "add", DOMAIN, timeout=120)
        compose("run", "--rm", "-T", "cli", "user", "add", USER, input=PASSWORD + "\n",
                timeout=120)

    with timings.phase("Dovecot import as vmail (uid 5000, read-only) + export as operator"):
        _dovecot_import_and_export(compose, ports)

    with timings.phase("mail: 25 plain + 587 STARTTLS/AUTH, read on 993"):
        first = [f"plain-{secrets.token_hex(4)}@remote.test",
                 f"sub-{secrets.token_hex(4)}@{DOMAIN}"]
        send_plain(ports[25], first[0])
        send_submission(ports[587], first[1])
        wait_delivered(ports[993], first)

    with timings.phase("filter: EICAR 554, GTUBE refused/Junk, clean with X-Spamd-Result"):
        _check_filter(ports)

    with timings.phase("real certificate dropped in: 993 serves it"):
        _replace_certificate(compose, ports)

    with timings.phase("client address seen by the mta"):
        _check_client_addresses(compose)

    with timings.phase("--scale mda=3, 10 messages exactly once"):
        compose("up", "-d", "--no-build", "--scale", "mda=3", timeout=300)
        containers = compose.wait_ready()
        assert sum(c["Service"] == "mda" for c in containers) == 3
        batch = [f"scaled-{i}-{secrets.token_hex(4)}@remote.test" for i in range(10)]
        for msgid in batch:
            send_plain(ports[25], msgid, "scaled")
        wait_delivered(ports[993], batch)

    with timings.phase("logs mta shows only the mta"):
        lines = compose.log_lines("mta")
        assert lines, "no mta log lines"
        for prefix, payload in lines:
            assert prefix.startswith("mta-"), (prefix, payload)
            assert json.loads(payload)["service"] == "mta", payload

    with timings.phase("--scale mta=2 refused: 25 is published"):
        done = compose("up", "-d", "--no-build", "--scale", "mda=3", "--scale", "mta=2",
                       check=False, timeout=300)
        output = done.stdout + done.stderr
        assert done.returncode != 0 and "allocated" in output, output[-2000:]
        compose("up", "-d", "--no-build", "--scale", "mda=3", "--scale", "mta=1", timeout=300)
        compose.wait_ready()

    with timings.phase("an mda killed (SIGKILL) mid-flow: nothing lost"):
        _crash_an_mda(compose, daemon, ports)


# docs/migrating-from-dovecot.md, "Running it in compose": the mail user (vmail) owns the
# Maildirs 0700/0600, the operator who exports is someone else again
VMAIL_UID = 5000
OPERATOR_UID = 5001
DOVECOT_USER = f"carol@{DOMAIN}"
DOVECOT_UIDVALIDITY = 1733000000
DOVECOT_UID = 42


def _dovecot_import_and_export(compose: Compose, ports: dict[int, int]) -> None:
    """A Dovecot server's files, owned by vmail with Dovecot's modes, imported through
    the `cli` service run as vmail with read-only mounts, exactly as the migration page
    says; the imported password logs in over the published 993 and the message has its
    Dovecot UID. Then `export` as the operator writes to the folder they mounted, files
    theirs, 0600 in 0700 folders."""
    project = compose.dir
    password = "dovecot-" + secrets.token_hex(8)
    vmail = project / "vmail"
    maildir = vmail / DOMAIN / "carol" / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    base = "1733550000.M1P1.oldmx"
    msgid = f"dovecot-{secrets.token_hex(4)}@remote.test"
    (maildir / "cur" / f"{base}:2,S").write_bytes(
        f"From: dave@remote.test\nTo: {DOVECOT_USER}\nSubject: kept\n"
        f"Message-ID: <{msgid}>\n\nfrom the old server\n".encode())
    (maildir / "dovecot-uidlist").write_text(
        f"3 V{DOVECOT_UIDVALIDITY} N{DOVECOT_UID + 1} G{secrets.token_hex(16)}\n"
        f"{DOVECOT_UID} :{base}\n")
    users = project / "import-users"
    users.write_text(f"{DOVECOT_USER}:{hash_password('SHA512-CRYPT', password)}:"
                     f"{VMAIL_UID}:{VMAIL_UID}::/var/vmail/{DOMAIN}/carol::\n")
    for path in (vmail, *vmail.rglob("*"), users):
        os.chown(path, VMAIL_UID, VMAIL_UID)
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    users.chmod(0o400)

    done = compose("run", "--rm", "-T", "--user", f"{VMAIL_UID}:{VMAIL_UID}",
                   "-v", f"{vmail}:/var/vmail:ro", "-v", f"{users}:/import/users:ro",
                   "cli", "import", "dovecot", "/import/users", timeout=120)
    assert "1 imported (1 with their old UID" in done.stdout, done.stdout + done.stderr
    imap = imaplib.IMAP4_SSL("127.0.0.1", ports[993], ssl_context=tls_client(), timeout=30)
    try:
        imap.login(DOVECOT_USER, password)
        imap.select("INBOX", readonly=True)
        assert imap.untagged_responses["UIDVALIDITY"] == [str(DOVECOT_UIDVALIDITY).encode()]
        status, data = imap.uid("FETCH", str(DOVECOT_UID),
                                "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        assert status == "OK" and isinstance(data[0], tuple), data
        assert msgid.encode() in data[0][1], data
    finally:
        imap.logout()

    out = project / "out"
    out.mkdir()
    os.chown(out, OPERATOR_UID, OPERATOR_UID)
    compose("run", "--rm", "-T", "--user", f"{OPERATOR_UID}:{OPERATOR_UID}",
            "-v", f"{out}:/export", "cli", "export", "/export/carol", "--user", DOVECOT_USER,
            timeout=120)
    files = list((out / "carol" / "cur").iterdir())
    assert len(files) == 1 and msgid.encode() in files[0].read_bytes(), files
    for path in (out / "carol", *(out / "carol").rglob("*")):
        info = path.stat()
        assert (info.st_uid, info.st_gid) == (OPERATOR_UID, OPERATOR_UID), path
        assert info.st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path
    print(f"[docker-e2e] dovecot: UID {DOVECOT_UID} kept; export {files[0].name} owned by "
          f"{OPERATOR_UID}")


def _wait_scanners(compose: Compose, timeout: float = 120) -> None:
    """rspamd's /ping and clamd's PING, asked from the dmarc container (the one that
    scans): before they answer, inbound mail would wait with 451."""
    script = (
        "import socket,urllib.request\n"
        "print(urllib.request.urlopen('http://rspamd:11333/ping',timeout=5).read())\n"
        "s=socket.create_connection(('clamav',3310),timeout=5);s.sendall(b'zPING\\0')\n"
        "assert s.recv(16).startswith(b'PONG')\n"
    )
    deadline = time.monotonic() + timeout
    done = None
    while time.monotonic() < deadline:
        done = compose("exec", "-T", "dmarc", "python", "-c", script, check=False, timeout=60)
        if done.returncode == 0:
            return
        time.sleep(2)
    logs = compose("logs", "--no-color", "--tail", "40", "rspamd", "clamav", check=False)
    raise E2EError(f"scanners not answering within {timeout}s: "
                   f"{done.stderr[-2000:] if done else ''}\n{logs.stdout}")


def _send_raw(port: int, body: bytes, subject: str, msgid: str) -> tuple[int, str]:
    """(code, text) of the end of DATA for a message to USER through port 25."""
    data = (f"From: bob@remote.test\r\nTo: {USER}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{msgid}>\r\nDate: Mon, 07 Dec 2026 07:00:00 +0000\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
            ).encode() + body + b"\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
        try:
            smtp.sendmail("bob@remote.test", [USER], data)
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error.decode(errors="replace")
    return 250, ""


def _fetch_header(port: int, mailbox: str, msgid: str, field: str) -> str | None:
    """``field`` of the message with ``msgid`` in ``mailbox`` ('' when it lacks it),
    None when the message is not there."""
    imap = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=tls_client(), timeout=30)
    try:
        imap.login(USER, PASSWORD)
        status, data = imap.select(mailbox, readonly=True)
        if status != "OK":
            return None
        status, data = imap.search(None, "HEADER", "Message-ID", f"<{msgid}>")
        numbers = data[0].split()
        if status != "OK" or not numbers:
            return None
        status, data = imap.fetch(numbers[0], f"(BODY.PEEK[HEADER.FIELDS ({field})])")
        assert status == "OK", data
        part = data[0]
        return part[1].decode(errors="replace").strip() if isinstance(part, tuple) else ""
    finally:
        imap.logout()


def _check_filter(ports: dict[int, int]) -> None:
    """Through the published 25: clamd refuses EICAR naming the test signature; rspamd's
    GTUBE action (reject in rspamd's own config) refuses it or files it in Junk; a clean
    message reaches INBOX with rspamd's X-Spamd-Result (docs/content-filtering.md)."""
    code, text = _send_raw(ports[25], EICAR, "eicar", f"eicar-{secrets.token_hex(4)}@remote.test")
    assert code == 554 and "Postroom.Test.EICAR" in text, (code, text)
    print(f"[docker-e2e] EICAR: {code} {text}")
    gtube_id = f"gtube-{secrets.token_hex(4)}@remote.test"
    code, text = _send_raw(ports[25], b"spam spam\r\n" + GTUBE, "gtube", gtube_id)
    if code == 250:
        deadline = time.monotonic() + 60
        while _fetch_header(ports[993], "Junk", gtube_id, "X-Spamd-Result") is None:
            assert time.monotonic() < deadline, "GTUBE accepted but never reached Junk"
            time.sleep(1)
        print("[docker-e2e] GTUBE: accepted into Junk")
    else:
        assert code == 554 and "spam" in text.lower(), (code, text)
        print(f"[docker-e2e] GTUBE: {code} {text}")
    clean_id = f"clean-{secrets.token_hex(4)}@remote.test"
    code, text = _send_raw(ports[25], b"Hello Alice, lunch on Thursday?", "lunch", clean_id)
    assert code == 250, (code, text)
    deadline = time.monotonic() + 60
    header = None
    while (header := _fetch_header(ports[993], "INBOX", clean_id, "X-Spamd-Result")) is None:
        assert time.monotonic() < deadline, "the clean message never reached INBOX"
        time.sleep(1)
    assert header.lower().startswith("x-spamd-result:"), header
    print(f"[docker-e2e] clean: INBOX, {header.splitlines()[0][:120]}")


def _replace_certificate(compose: Compose, ports: dict[int, int]) -> None:
    """The operator copies the real pair over the self-signed one; no restart needed."""
    from postroom.net.tls import make_self_signed

    tls = compose.dir / "tls"
    staging = compose.dir / "tls-new"
    make_self_signed(staging / "fullchain.pem", staging / "privkey.pem", "real.example.org")
    for name in ("privkey.pem", "fullchain.pem"):  # key first, as certbot's deploy hooks do
        os.chown(staging / name, 10025, 10025)
        os.replace(staging / name, tls / name)
    deadline = time.monotonic() + 60
    subject = ""
    while time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", ports[993]), timeout=10) as raw, \
                tls_client().wrap_socket(raw) as conn:
            der = conn.getpeercert(binary_form=True)
        subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        if "real.example.org" in subject:
            return
        time.sleep(1)
    raise E2EError(f"imap still serves {subject} a minute after the certificate changed")


def _check_client_addresses(compose: Compose) -> None:
    """From another container: the mta logs that container's own address. From the host
    through a published port: docker-proxy's address on the compose network (what
    docs/deploy-docker.md, "Client addresses", tells operators to avoid on port 25)."""
    script = (
        "import smtplib,socket;"
        "s=smtplib.SMTP('mta',25,timeout=20);"
        "print(s.sock.getsockname()[0]);s.ehlo('probe.test');s.quit()"
    )
    out = compose("run", "--rm", "-T", "--entrypoint", "python", "cli", "-c", script,
                  timeout=120).stdout
    address = out.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", address), out
    deadline = time.monotonic() + 20
    peers: set[str] = set()
    while time.monotonic() < deadline:
        peers = {json.loads(payload).get("peer", "") for _, payload in compose.log_lines("mta")
                 if '"smtp connection opened"' in payload}
        if address in peers:
            break
        time.sleep(1)
    assert address in peers, f"the mta did not log the client {address}: {peers}"
    gateway = COMPOSE_SUBNET.rsplit(".", 1)[0] + ".1"
    print(f"[docker-e2e] mta saw container client {address}; host clients through "
          f"docker-proxy arrive as {sorted(peers - {address})} (gateway {gateway})")


def _crash_an_mda(compose: Compose, daemon: Dockerd, ports: dict[int, int]) -> None:
    batch = [f"crash-{i}-{secrets.token_hex(4)}@remote.test" for i in range(20)]
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            for msgid in batch:
                send_plain(ports[25], msgid, "crash")
                time.sleep(0.1)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=sender)
    thread.start()
    time.sleep(0.5)
    victim = next(c for c in compose.ps() if c["Service"] == "mda")
    pid = int(daemon.docker("inspect", "-f", "{{.State.Pid}}", victim["Name"]).stdout)
    os.kill(pid, signal.SIGKILL)  # a crash, not a stop: the restart policy brings it back
    thread.join(timeout=120)
    assert not errors, errors
    wait_delivered(ports[993], batch, timeout=180)
    # the killed replica came back by itself (restart: unless-stopped)
    compose.wait_ready(timeout=120)
    restarts = daemon.docker("inspect", "-f", "{{.RestartCount}}", victim["Name"]).stdout
    assert int(restarts) >= 1, f"{victim['Name']} was not restarted"


def test_compose_proxy_mode_with_scaled_listeners(daemon: Dockerd, project: Path,
                                                 ports: dict[int, int], timings: Timings):
    """The documented proxy mode (deploy/compose.proxy.yaml): HAProxy holds the ports,
    mta and imap run two replicas each, mail through the proxy arrives exactly once,
    and the mta logs the address HAProxy saw (PROXY v2), not HAProxy's own."""
    write_env(project, ports, proxy=True)
    compose = Compose(daemon, project, "pre2p", IMAGE, extra_files=[
        "deploy/compose.proxy.yaml", "tests/deploy/docker_e2e/compose.e2e-proxy.yaml"])
    try:
        with timings.phase("proxy mode: up --scale mta=2 imap=2 mda=2"):
            compose("up", "-d", "--no-build", "--scale", "mta=2", "--scale", "imap=2",
                    "--scale", "mda=2", timeout=300)
            containers = compose.wait_ready()
            assert sum(c["Service"] == "mta" for c in containers) == 2
            assert sum(c["Service"] == "imap" for c in containers) == 2
            assert any(c["Service"] == "proxy" for c in containers)
        with timings.phase("proxy mode: cli + 8 messages via HAProxy, read on 993"):
            compose("run", "--rm", "-T", "cli", "domain", "add", DOMAIN, timeout=120)
            compose("run", "--rm", "-T", "cli", "user", "add", USER, input=PASSWORD + "\n",
                    timeout=120)
            batch = [f"proxied-{i}-{secrets.token_hex(4)}@remote.test" for i in range(8)]
            for msgid in batch:
                send_plain(ports[25], msgid, "proxied")
            send_submission(ports[587], f"proxied-sub-{secrets.token_hex(4)}@{DOMAIN}")
            wait_delivered(ports[993], batch)
        with timings.phase("proxy mode: the mta logs the client HAProxy saw"):
            proxy_ips = set(daemon.docker("inspect", "-f",
                                          "{{range .NetworkSettings.Networks}}{{.IPAddress}} "
                                          "{{end}}", *[c["Name"] for c in containers
                                                       if c["Service"] == "proxy"]
                                          ).stdout.split())
            # the sessions that carried our mail (HAProxy's health checks, PROXY "LOCAL",
            # are logged with HAProxy's own address, as they should be)
            events = [json.loads(payload) for _, payload in compose.log_lines("mta")
                      if payload.startswith("{")]
            peers = {e.get("peer", "") for e in events if e.get("mail_from") == "bob@remote.test"}
            assert peers, "no message from bob@remote.test logged by the mtas"
            assert not peers & proxy_ips, f"the mta logged HAProxy itself: {peers}"
            print(f"[docker-e2e] proxy mode: mtas logged {sorted(peers)} (HAProxy {proxy_ips})")
    except BaseException:
        print("--- docker compose logs (tail) on failure\n" + compose.logs_tail(40), flush=True)
        raise
    finally:
        with timings.phase("proxy mode: down -v"):
            compose("down", "-v", "--remove-orphans", "-t", "10", check=False, timeout=180)


STACK = "pr"
SWARM_LONG_RUNNING = ("postgres", "redis", "dns", "dmarc", "mta", "msa", "mda", "pop3", "imap")


def test_single_node_swarm_stack_round_trip_and_scale(daemon: Dockerd, project: Path,
                                                     ports: dict[int, int], timings: Timings):
    """docs/deploy-docker.md's conversion (compose config | deploy/swarm.py) deployed with
    `docker stack deploy` on a one-node Swarm of the same daemon, mail through it,
    `docker service scale`. Runs after the compose test (same daemon, same images)."""
    # a fresh .env: the filter profile's scanner settings of the compose test would make
    # the mta wait for a clamd this stack does not run
    write_env(project, ports)
    compose = Compose(daemon, project, STACK, IMAGE)
    try:
        _swarm_scenario(compose, daemon, project, timings)
    except BaseException:
        for name in ("mta", "msa", "mda", "migrate", "imap"):
            logs = daemon.docker("service", "logs", "--raw", "--tail", "20", f"{STACK}_{name}",
                                 check=False, timeout=60)
            print(f"--- service logs {name}\n{logs.stdout[-3000:]}{logs.stderr[-1000:]}")
        raise
    finally:
        with timings.phase("stack rm + swarm leave"):
            daemon.docker("stack", "rm", STACK, check=False, timeout=120)
            daemon.docker("swarm", "leave", "--force", check=False, timeout=120)


def _swarm_scenario(compose: Compose, daemon: Dockerd, project: Path, timings: Timings) -> None:
    with timings.phase("swarm init (loopback only)"):
        daemon.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr",
                      "127.0.0.1:2377", "--default-addr-pool", "10.214.0.0/16", timeout=120)
        node = daemon.docker("node", "ls", "-q").stdout.split()[0]
        # compose.yaml pins the database to the node labelled for it, the conversion the
        # listeners to the mail nodes (docs/deploy-docker.md, "Docker Swarm")
        daemon.docker("node", "update", "--label-add", "postroom.db=true", "--label-add",
                      "postroom.mail=true", node)

    with timings.phase("conversion + stack deploy"):
        config = compose("--profile", "tools", "config", "--format", "json", timeout=60).stdout
        stack = json.loads(run(["python3", "deploy/swarm.py"], cwd=project, input=config).stdout)
        assert stack["services"]["cli"]["deploy"]["replicas"] == 0
        for service in stack["services"].values():
            # Swarm publishes on every address whatever dockerd's --ip says: this test
            # reaches the services over the attachable stack network instead
            assert all(port["mode"] == "host" for port in service.pop("ports", []))
        (project / "stack.json").write_text(json.dumps(stack))
        daemon.docker("stack", "deploy", "-c", str(project / "stack.json"), STACK, timeout=180)

    with timings.phase("every service running and healthy"):
        _wait_services(daemon, {name: 1 for name in SWARM_LONG_RUNNING})

    with timings.phase("second node: shipped stacks bind nothing; docker stack config"):
        _check_shipped_stacks(daemon, project)

    with timings.phase("DNS stub address to mta + dmarc"):
        dns = _task_containers(daemon, "dns")[0]
        address = daemon.docker("inspect", "-f",
                                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                                dns).stdout.strip()
        for name in ("mta", "dmarc"):
            daemon.docker("service", "update", "-q", "--env-add",
                          f"POSTROOM_DNS_SERVERS={address}", f"{STACK}_{name}", timeout=300)
        _wait_services(daemon, {name: 1 for name in SWARM_LONG_RUNNING})

    with timings.phase("operator CLI: docker exec into the msa task"):
        msa = _task_containers(daemon, "msa")[0]
        daemon.docker("exec", msa, "postroom", "domain", "add", DOMAIN, timeout=60)
        daemon.docker("exec", "-i", msa, "postroom", "user", "add", USER,
                      input=PASSWORD + "\n", timeout=60)

    with timings.phase("swarm mail: 25 + 587, read on 993"):
        _swarm_mail(daemon, "swarm1", 3)

    with timings.phase("docker service scale mda=3 + mail exactly once"):
        daemon.docker("service", "scale", f"{STACK}_mda=3", timeout=300)
        _wait_services(daemon, {"mda": 3})
        _swarm_mail(daemon, "swarm2", 8)


REGISTRY_IMAGE = "registry.example.org:5000/postroom:1.4.0"


def _check_shipped_stacks(daemon: Dockerd, project: Path) -> None:
    """docs/deploy-docker.md, "What a second node needs", on the shipped files alone (no
    test override), every profile, with and without proxy mode, through compose v2's
    config and deploy/swarm.py: no bind mount of a host file is left (configs instead,
    which the manager hands to any node), POSTROOM_IMAGE's registry name is every
    Postroom service's image (no warning), and Swarm's own loader (`docker stack config`,
    where this CLI has it) reads the result."""
    env = dict(daemon.env, POSTROOM_IMAGE=REGISTRY_IMAGE)
    has_stack_config = "stack config" in run([DOCKER_CLI, "stack", "config", "--help"],
                                             env=env, check=False, timeout=30).stdout
    for extra in ([], ["-f", "deploy/compose.proxy.yaml"]):
        config = run([DOCKER_CLI, "compose", "-p", "shipped", "-f", "compose.yaml", *extra,
                      "--profile", "tools", "--profile", "filter", "config", "--format",
                      "json"], env=env, cwd=project, timeout=60).stdout
        done = run(["python3", "deploy/swarm.py"], cwd=project, input=config)
        assert "warning" not in done.stderr, done.stderr
        stack = json.loads(done.stdout)
        for name, service in stack["services"].items():
            binds = [v for v in service.get("volumes", []) if v.get("type") == "bind"]
            assert not binds, (name, binds)
            if json.loads(config)["services"][name].get("build"):
                assert service["image"] == REGISTRY_IMAGE, name
        rspamd = {c["target"] for c in stack["services"]["rspamd"]["configs"]}
        assert "/etc/rspamd/local.d/actions.conf" in rspamd, rspamd
        if extra:
            assert stack["services"]["proxy"]["configs"][0]["target"].endswith("haproxy.cfg")
        path = project / f"stack-shipped{len(extra)}.json"
        path.write_text(json.dumps(stack))
        if has_stack_config:
            loaded = run([DOCKER_CLI, "stack", "config", "-c", str(path)], env=env,
                         timeout=60).stdout
            assert REGISTRY_IMAGE in loaded and "configs:" in loaded, loaded[-2000:]
    print(f"[docker-e2e] shipped stacks: no bind mounts; docker stack config "
          f"{'accepted them' if has_stack_config else 'not in this CLI'}")


def _task_containers(daemon: Dockerd, service: str) -> list[str]:
    return daemon.docker("ps", "-q", "-f",
                         f"label=com.docker.swarm.service.name={STACK}_{service}").stdout.split()


def _wait_services(daemon: Dockerd, want: dict[str, int], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    pending: list[str] = []
    while time.monotonic() < deadline:
        pending = []
        for service, replicas in want.items():
            ids = _task_containers(daemon, service)
            healthy = [c for c in ids if daemon.docker(
                "inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{else}}"
                "{{.State.Status}}{{end}}", c, check=False).stdout.strip()
                in ("healthy", "running")]
            if len(healthy) < replicas:
                pending.append(f"{service}: {len(healthy)}/{replicas}")
        if not pending:
            return
        time.sleep(3)
    raise E2EError(f"services not healthy within {timeout}s: {pending}")


def _swarm_mail(daemon: Dockerd, tag: str, total: int) -> None:
    client = Path(__file__).with_name("mail_client.py")
    out = daemon.docker("run", "--rm", "--network", f"{STACK}_default", "--entrypoint", "python",
                        "-v", f"{client}:/mail_client.py:ro", IMAGE, "/mail_client.py", USER,
                        PASSWORD, f"{tag}-{secrets.token_hex(3)}", str(total),
                        timeout=240).stdout
    counts = json.loads(out.strip().splitlines()[-1])
    assert len(counts) == total + 1, counts
    assert all(n == 1 for n in counts.values()), f"not exactly once: {counts}"


# a client outside Docker: connect to the Docker host's published 25 (retrying while the
# mta starts), EHLO, QUIT; print which local address each connection went out from
_NAT_PROBE = """
import json, smtplib, sys, time
seen = {}
deadline = time.monotonic() + 90
for host in sys.argv[1:]:
    while True:
        try:
            with smtplib.SMTP(host, 25, timeout=20) as smtp:
                seen[host] = smtp.sock.getsockname()[0]
                assert smtp.ehlo("client.example.net")[0] == 250
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
print(json.dumps(seen))
"""


def test_client_addresses_through_docker_nat_in_a_network_namespace(
        daemon: Dockerd, project: Path, timings: Timings):
    """docs/deploy-docker.md, "Client addresses", as written: a dockerd with the page's
    daemon.json (iptables and ip6tables on) in a network namespace of its own, compose.yaml
    with the page's compose.override.yaml and .env lines, and a client that is a process
    in another namespace (not a container): the mta logs the client's own IPv4 and IPv6
    address as ``peer``, never the gateway's."""
    blocks = docs_blocks(DEPLOY_DOC, "## 4. Client addresses")
    daemon_json = json.loads(blocks["json"][0])
    assert daemon_json["userland-proxy"] is False and daemon_json["ip6tables"] is True
    if dockerd_major() < 27:
        # the page's note: Debian's 20.10 refuses ip6tables without it
        daemon_json["experimental"] = True
    (project / "compose.override.yaml").write_text(blocks["yaml"][0])
    listen = dict(line.split("=", 1) for line in blocks["ini"][0].splitlines() if "=" in line)
    assert listen["POSTROOM_MTA_LISTEN"] == "tcp:25,tcp6:25", listen
    write_env(project, None, extra=listen)
    with tempfile.TemporaryDirectory(prefix="postroom-e2e-nat-") as tmp:
        host = NatHost(Path(tmp), daemon_json)
        compose = Compose(host, project, "pre2n", IMAGE, extra_files=["compose.override.yaml"],
                          override="tests/deploy/docker_e2e/compose.e2e-nat.yaml")
        try:
            with timings.phase("NAT: namespaces + dockerd with the documented daemon.json"):
                host.start()
            with timings.phase("NAT: images (docker save | docker load)"):
                host.load_images(daemon, [IMAGE, "postroom-e2e/postgres:latest",
                                          "postroom-e2e/redis:latest"])
            with timings.phase("NAT: up postgres redis migrate tls dmarc mta"):
                compose("up", "-d", "--no-build", "dmarc", "mta", timeout=300)
            with timings.phase("NAT: IPv4 + IPv6 client (not a container) to the published 25"):
                out = host.client(_NAT_PROBE, HOST_V4, HOST_V6, timeout=120)
                assert json.loads(out.strip().splitlines()[-1]) == {
                    HOST_V4: CLIENT_V4, HOST_V6: CLIENT_V6}, out
                peers: set[str] = set()
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    peers = {json.loads(payload).get("peer", "")
                             for _, payload in compose.log_lines("mta")
                             if '"smtp connection opened"' in payload}
                    if len(peers) >= 2:
                        break
                    time.sleep(1)
                # exactly the client's two addresses: neither a gateway nor docker-proxy
                assert peers == {CLIENT_V4, CLIENT_V6}, (peers, host.rules())
                print(f"[docker-e2e] NAT: the mta logged peers {sorted(peers)}")
        except BaseException:
            print("--- NAT compose logs (tail)\n" + compose.logs_tail(40) + "\n--- rules\n"
                  + host.rules() + "\n--- dockerd\n" + host.tail(), flush=True)
            raise
        finally:
            with timings.phase("NAT: down -v, dockerd stopped, namespaces removed"):
                if host.process is not None and host.process.poll() is None:
                    compose("down", "-v", "--remove-orphans", "-t", "0", check=False,
                            timeout=180)
                host.stop()
                (project / "compose.override.yaml").unlink(missing_ok=True)
