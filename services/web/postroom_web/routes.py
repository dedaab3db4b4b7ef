"""Every module that registers endpoints or pages: importing this registers them all.

Adding an area is one line here (docs/web.md, "Adding an endpoint and a page").
"""

from __future__ import annotations

from postroom_web.api import dmarc as api_dmarc
from postroom_web.api import domains as api_domains
from postroom_web.api import meta as api_meta
from postroom_web.framework import REGISTRY, Registry
from postroom_web.views import account as views_account
from postroom_web.views import dmarc as views_dmarc
from postroom_web.views import domains as views_domains
from postroom_web.views import overview as views_overview

MODULES = (api_meta, api_domains, api_dmarc, views_account, views_overview, views_domains,
           views_dmarc)


def registry() -> Registry:
    """The registry with every route of the modules above."""
    return REGISTRY
