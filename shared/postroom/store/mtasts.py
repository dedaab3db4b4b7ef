"""Each local domain's MTA-STS mode (none / testing / enforce) and the stamp of its last change."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from postroom.mailauth.mtasts import MODES
from postroom.store.addresses import normalise_domain
from postroom.store.errors import NotFound
from postroom.store.models import Domain


@dataclass(frozen=True)
class MtaStsSetting:
    domain: str
    mode: str
    stamp: str | None   # changes with every set_mode (postroom.mailauth.mtasts.policy_id)


def new_stamp() -> str:
    """A UTC timestamp and two random characters: new at every change, even in one second."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime()) + secrets.token_hex(2)


def set_mode(session: Session, domain: str, mode: str) -> MtaStsSetting:
    """Set the domain's MTA-STS mode and a new stamp; NotFound when it is not a local domain."""
    if mode not in MODES:
        raise ValueError(f"MTA-STS mode must be one of {', '.join(MODES)}")
    name = normalise_domain(domain)
    stamp = new_stamp()
    found = session.execute(update(Domain).where(Domain.name == name)
                            .values(mta_sts_mode=mode, mta_sts_id=stamp)
                            .returning(Domain.name)).first()
    if found is None:
        raise NotFound(f"no such domain: {name}")
    return MtaStsSetting(name, mode, stamp)


def get_setting(session: Session, domain: str) -> MtaStsSetting | None:
    """The domain's mode and stamp; None when it is not a local domain (or not a domain)."""
    try:
        name = normalise_domain(domain)
    except ValueError:
        return None
    row = session.execute(select(Domain.mta_sts_mode, Domain.mta_sts_id)
                          .where(Domain.name == name)).first()
    if row is None:
        return None
    return MtaStsSetting(name, row[0], row[1])
