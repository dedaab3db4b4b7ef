"""Install the peers when missing: Debian packages (apt-get) and Haraka (npm, under var/bench).

Nothing installed here starts a system daemon: Debian's policy-rc.d in the
container refuses service starts, and the bench never uses the system
configs (each peer runs from a private config directory). Each step is
bounded in time; a failure is reported and the workloads that need the
missing peer are skipped with that reason.
"""

from __future__ import annotations

import os

from common import VAR, progress, run, say_error, tool

DEBIAN = {
    "postfix": "postfix",  # smtp-source and the peer MTA
    "dovecot": "dovecot-imapd",
    "doveadm": "dovecot-core",
    "swaks": "swaks",
}
DEBIAN_FILES = {"/usr/lib/dovecot/lmtp": "dovecot-lmtpd", "/usr/lib/dovecot/pop3": "dovecot-pop3d",
                "/usr/lib/dovecot/imap": "dovecot-imapd"}
HARAKA_VERSION = "3"


def missing_debian() -> list[str]:
    wanted = {pkg for name, pkg in DEBIAN.items() if tool(name) is None}
    wanted |= {pkg for path, pkg in DEBIAN_FILES.items() if not os.path.exists(path)}
    return sorted(wanted)


def ensure_debian() -> str | None:
    """apt-get install what is missing; None when all is there, else why not."""
    missing = missing_debian()
    if not missing:
        return None
    if tool("apt-get") is None or os.geteuid() != 0:
        return f"missing {', '.join(missing)} and cannot apt-get install (not root on Debian)"
    progress(f"installing Debian packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        run(["apt-get", "update", "-qq"], env=env, timeout=300)
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env,
            timeout=600)
    except Exception as exc:
        return f"apt-get install {' '.join(missing)} failed: {say_error(exc)}"
    still = missing_debian()
    return f"still missing after install: {', '.join(still)}" if still else None


def ensure_haraka() -> str | None:
    """npm install Haraka into var/bench/haraka-pkg; None when it is there, else why not."""
    pkg = VAR / "haraka-pkg"
    if (pkg / "node_modules" / ".bin" / "haraka").exists():
        return None
    if tool("npm") is None:
        if tool("apt-get") is not None and os.geteuid() == 0:
            progress("installing Debian packages: nodejs npm")
            try:
                run(["apt-get", "install", "-y", "-qq", "nodejs", "npm"],
                    env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=600)
            except Exception as exc:
                return f"npm is missing and could not be installed: {say_error(exc)}"
        else:
            return "npm is not installed"
    progress(f"installing Haraka@{HARAKA_VERSION} from npm into {pkg}")
    pkg.mkdir(parents=True, exist_ok=True)
    try:
        _npm_install(pkg)
    except Exception as exc:
        return f"npm install Haraka failed: {say_error(exc)}"
    return None


def _npm_install(pkg: os.PathLike[str]) -> None:
    import subprocess

    proc = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error",
                           f"Haraka@{HARAKA_VERSION}"], cwd=pkg, timeout=600,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout.decode(errors="replace")[-500:])


def ensure_all() -> dict[str, str | None]:
    """Install every peer; {peer: None or the reason it is unavailable}."""
    return {"debian": ensure_debian(), "haraka": ensure_haraka()}
