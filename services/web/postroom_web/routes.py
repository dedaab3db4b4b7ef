"""Every module that registers endpoints or pages: importing this registers them all.

Adding an area is one line here (docs/web.md, "Adding an endpoint and a page").
"""

from __future__ import annotations

from postroom_web.api import aliases as api_aliases
from postroom_web.api import dkim as api_dkim
from postroom_web.api import dns as api_dns
from postroom_web.api import domains as api_domains
from postroom_web.api import meta as api_meta
from postroom_web.api import users as api_users
from postroom_web.framework import REGISTRY, Registry
from postroom_web.views import account as views_account
from postroom_web.views import aliases as views_aliases
from postroom_web.views import dkim as views_dkim
from postroom_web.views import domain as views_domain
from postroom_web.views import domains as views_domains
from postroom_web.views import overview as views_overview
from postroom_web.views import users as views_users

MODULES = (api_meta, api_domains, views_account, views_overview, views_domains,
           api_users, api_aliases, api_dkim, api_dns,
           views_domain, views_users, views_aliases, views_dkim)


def registry() -> Registry:
    """The registry with every route of the modules above."""
    return REGISTRY
