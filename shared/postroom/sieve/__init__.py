"""Sieve (RFC 5228) for Postroom: the extensions we run, checking a script, running it.

:func:`check_script` is what `postroom sieve put|check` and ManageSieve
(PUTSCRIPT, CHECKSCRIPT) ask before a script is stored; :data:`SIEVE_EXTENSIONS`
is what we run (the ManageSieve SIEVE capability). Parsing is sievelib's
(:mod:`postroom.sieve.grammar`); the checks after it are ours
(:mod:`postroom.sieve.check`). docs/mda.md, "Sieve"; docs/decisions/0014-sieve.md.
"""

from __future__ import annotations

from postroom.sieve.check import SIEVE_EXTENSIONS, SieveError, check_script

__all__ = ["SIEVE_EXTENSIONS", "SieveError", "check_script"]
