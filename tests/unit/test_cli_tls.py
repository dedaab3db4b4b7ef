"""`postroom tls self-signed`: what compose's one-shot `tls` service runs on first start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cryptography import x509


def _tls(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    env.update(POSTROOM_HOSTNAME="mail.example.org",
               POSTROOM_TLS_CERT_FILE=str(tmp_path / "tls" / "fullchain.pem"),
               POSTROOM_TLS_KEY_FILE=str(tmp_path / "tls" / "privkey.pem"))
    return subprocess.run([sys.executable, "-m", "postroom.ops.cli", "tls", "self-signed", *args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_writes_a_pair_for_the_hostname_with_a_private_key(tmp_path):
    done = _tls(tmp_path, "--if-missing")
    assert done.returncode == 0, done.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "tls" / "fullchain.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "mail.example.org" in names.get_values_for_type(x509.DNSName)
    assert (tmp_path / "tls" / "privkey.pem").stat().st_mode & 0o777 == 0o600


def test_if_missing_leaves_an_existing_pair_alone(tmp_path):
    assert _tls(tmp_path).returncode == 0
    before = (tmp_path / "tls" / "fullchain.pem").read_bytes()
    done = _tls(tmp_path, "--if-missing")
    assert done.returncode == 0, done.stderr
    assert "left as they are" in done.stderr
    assert (tmp_path / "tls" / "fullchain.pem").read_bytes() == before


def test_never_overwrites_and_refuses_half_a_pair(tmp_path):
    assert _tls(tmp_path).returncode == 0
    # without --if-missing an existing certificate is never replaced
    again = _tls(tmp_path)
    assert again.returncode != 0 and "never overwritten" in again.stderr
    # a real certificate whose key is missing: refuse, naming the other file
    (tmp_path / "tls" / "privkey.pem").unlink()
    half = _tls(tmp_path, "--if-missing")
    assert half.returncode != 0
    assert "privkey.pem" in half.stderr and "Traceback" not in half.stderr
