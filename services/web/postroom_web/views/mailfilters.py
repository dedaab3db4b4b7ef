"""A user's own mail handling: the vacation reply and simple filter rules (one generated Sieve
script, postroom.sieve.simple), and the raw Sieve editor with the server's own checker.

Every script goes through postroom.store.sieve, as ManageSieve's and `postroom sieve`'s do,
within the same limits (POSTROOM_SIEVE_MAX_SCRIPT_BYTES, POSTROOM_SIEVE_MAX_SCRIPTS).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from postroom.sieve import check_script
from postroom.sieve.simple import (
    ACTIONS,
    FIELDS,
    SCRIPT_NAME,
    Rule,
    SimpleSettings,
    Vacation,
    generate,
    parse,
)
from postroom.store import sieve
from postroom.store.db import StoreSession
from postroom.store.errors import StoreError
from postroom_web.framework import Access, Ctx, Redirect, forbidden, page

# empty rows offered under the rules there are
SPARE_RULES = 3
MAX_FORM_RULES = 50
ACTION_LABELS = {"fileinto": "move to folder", "addflag": "mark as read",
                 "redirect": "forward to", "stop": "stop (no further rules)"}
FIELD_LABELS = {"from": "From", "to": "To", "subject": "Subject"}


@dataclass(frozen=True)
class Current:
    """The account's scripts as the simple editors see them."""

    settings: SimpleSettings      # ours as written (defaults when there is none)
    active_name: str | None       # the active script's name
    foreign: bool                 # the active script is not one the simple editors wrote
    text: str                     # the active script's text (else ours, else "")


def _user_id(ctx: Ctx) -> int:
    if ctx.user.kind != "user" or ctx.user.user_id is None:
        raise forbidden("an API token has no account of its own")
    return ctx.user.user_id


def load(session: StoreSession, user_id: int) -> Current:
    active = sieve.active_script(session, user_id)
    ours = sieve.get_script(session, user_id, SCRIPT_NAME)
    settings = parse(ours) if ours is not None else None
    if active is None:
        return Current(settings or SimpleSettings(), None, False, ours or "")
    name, text = active
    foreign = name != SCRIPT_NAME or settings is None
    return Current(settings or SimpleSettings(), name, foreign, text)


def _save(session: StoreSession, user_id: int, name: str, text: str, max_scripts: int) -> None:
    existing = {s.name for s in sieve.list_scripts(session, user_id)}
    if name not in existing and len(existing) >= max_scripts:
        raise ValueError(f"you have {len(existing)} Sieve scripts, the most allowed; delete "
                         "one first (ManageSieve or `postroom sieve`)")
    sieve.put_script(session, user_id, name, text)
    sieve.set_active(session, user_id, name)


def save_simple(session: StoreSession, user_id: int, current: Current,
                settings: SimpleSettings, *, replace_foreign: bool, max_bytes: int,
                max_scripts: int) -> list[str]:
    """Write the generated script and make it active; the problems found (nothing written
    then). The page and the API both save through here."""
    if current.foreign and not replace_foreign:
        return [f"Your active Sieve script ({current.active_name}) was not written by these "
                "pages. Edit it in the Sieve editor, or tick the box to replace it."]
    try:
        text = generate(settings)
    except ValueError as exc:
        return [str(exc)]
    problems = check_script(text, max_bytes=max_bytes)
    if problems:
        return [f"line {p.line}: {p.message}" for p in problems]
    try:
        _save(session, user_id, SCRIPT_NAME, text, max_scripts)
    except (StoreError, ValueError) as exc:
        return [str(exc)]
    return []


def _save_simple(ctx: Ctx, current: Current, settings: SimpleSettings) -> list[str]:
    return save_simple(ctx.store, _user_id(ctx), current, settings,
                       replace_foreign=ctx.form.get("replace_foreign") == "on",
                       max_bytes=ctx.settings.sieve_max_script_bytes,
                       max_scripts=ctx.settings.sieve_max_scripts)


def _form_int(ctx: Ctx, name: str, default: int) -> int:
    try:
        return int(ctx.form.get(name, "") or default)
    except ValueError:
        return -1


# --- vacation

def _vacation_values(current: Current, vacation: Vacation | None = None) -> dict[str, Any]:
    return {"title": "Vacation reply", "vacation": vacation or current.settings.vacation,
            "foreign": current.foreign, "active_name": current.active_name}


@page("GET", "/account/vacation", template="account/vacation.html", access=Access.USER,
      title="Vacation reply")
def vacation_page(ctx: Ctx) -> dict[str, Any]:
    return _vacation_values(load(ctx.store, _user_id(ctx)))


@page("POST", "/account/vacation", template="account/vacation.html", access=Access.USER,
      title="Vacation reply")
def save_vacation(ctx: Ctx) -> dict[str, Any] | Redirect:
    current = load(ctx.store, _user_id(ctx))
    addresses = tuple(a.strip() for a in ctx.form.get("addresses", "").replace(",", "\n")
                      .splitlines() if a.strip())
    vacation = Vacation(enabled=ctx.form.get("enabled") == "on",
                        start=ctx.form.get("start") or None, end=ctx.form.get("end") or None,
                        subject=ctx.form.get("subject", "").strip(),
                        text=ctx.form.get("text", "").replace("\r\n", "\n").strip(),
                        days=_form_int(ctx, "days", 7), addresses=addresses[:20])
    problems = _save_simple(ctx, current, replace(current.settings, vacation=vacation))
    if problems:
        ctx.status = 422
        return {**_vacation_values(current, vacation), "errors": problems}
    return Redirect("/account/vacation", notice="Vacation reply " + (
        "on." if vacation.enabled else "off."))


# --- filters

def _filter_values(current: Current, rules: tuple[Rule, ...] | None = None) -> dict[str, Any]:
    shown = list(rules if rules is not None else current.settings.rules)
    shown += [Rule("from", "", "fileinto")] * SPARE_RULES
    return {"title": "Filters", "rules": shown, "fields": FIELD_LABELS,
            "actions": ACTION_LABELS, "foreign": current.foreign,
            "active_name": current.active_name}


@page("GET", "/account/filters", template="account/filters.html", access=Access.USER,
      title="Filters")
def filters_page(ctx: Ctx) -> dict[str, Any]:
    return _filter_values(load(ctx.store, _user_id(ctx)))


@page("POST", "/account/filters", template="account/filters.html", access=Access.USER,
      title="Filters")
def save_filters(ctx: Ctx) -> dict[str, Any] | Redirect:
    current = load(ctx.store, _user_id(ctx))
    rules: list[Rule] = []
    for i in range(MAX_FORM_RULES + SPARE_RULES):
        contains = ctx.form.get(f"rule_{i}_contains", "").strip()
        if not contains or ctx.form.get(f"rule_{i}_delete") == "on":
            continue
        field = ctx.form.get(f"rule_{i}_field", "")
        action = ctx.form.get(f"rule_{i}_action", "")
        rules.append(Rule(field if field in FIELDS else "?", contains,
                          action if action in ACTIONS else "?",
                          ctx.form.get(f"rule_{i}_target", "").strip(),
                          ctx.form.get(f"rule_{i}_stop") == "on"))
    problems = _save_simple(ctx, current, replace(current.settings, rules=tuple(rules)))
    if problems:
        ctx.status = 422
        return {**_filter_values(current, tuple(rules)), "errors": problems}
    return Redirect("/account/filters", notice=f"{len(rules)} filter rules saved.")


# --- the raw editor

@page("GET", "/account/sieve", template="account/sieve.html", access=Access.USER,
      title="Sieve script")
def sieve_page(ctx: Ctx) -> dict[str, Any]:
    current = load(ctx.store, _user_id(ctx))
    return {"title": "Sieve script", "name": current.active_name or SCRIPT_NAME,
            "text": current.text, "max_bytes": ctx.settings.sieve_max_script_bytes}


@page("POST", "/account/sieve", template="account/sieve.html", access=Access.USER,
      title="Sieve script")
def save_sieve(ctx: Ctx) -> dict[str, Any] | Redirect:
    """Check the script with the server's own checker; save it and make it active if it passes."""
    name = ctx.form.get("name", "").strip() or SCRIPT_NAME
    text = ctx.form.get("text", "").replace("\r\n", "\n")
    values = {"title": "Sieve script", "name": name[:128], "text": text,
              "max_bytes": ctx.settings.sieve_max_script_bytes}
    problems = check_script(text, max_bytes=ctx.settings.sieve_max_script_bytes)
    if problems:
        ctx.status = 422
        return {**values, "problems": problems}
    try:
        sieve.check_name(name)
        _save(ctx.store, _user_id(ctx), name, text, ctx.settings.sieve_max_scripts)
    except (StoreError, ValueError) as exc:
        ctx.status = 422
        return {**values, "errors": [str(exc)]}
    return Redirect("/account/sieve", notice=f"Sieve script {name[:128]} saved and active.")
