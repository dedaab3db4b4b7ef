"""Every module that registers endpoints or pages: importing this registers them all.

Adding an area is one line here (docs/web.md, "Adding an endpoint and a page").
"""

from __future__ import annotations

from postroom_web.api import account as api_account
from postroom_web.api import aliases as api_aliases
from postroom_web.api import dkim as api_dkim
from postroom_web.api import dmarc as api_dmarc
from postroom_web.api import dns as api_dns
from postroom_web.api import domains as api_domains
from postroom_web.api import meta as api_meta
from postroom_web.api import metrics as api_metrics
from postroom_web.api import queue as api_queue
from postroom_web.api import tls_reports as api_tls
from postroom_web.api import users as api_users
from postroom_web.framework import REGISTRY, Registry
from postroom_web.views import account as views_account
from postroom_web.views import aliases as views_aliases
from postroom_web.views import autoconfig as views_autoconfig
from postroom_web.views import dkim as views_dkim
from postroom_web.views import dmarc as views_dmarc
from postroom_web.views import domain as views_domain
from postroom_web.views import domains as views_domains
from postroom_web.views import mailfilters as views_mailfilters
from postroom_web.views import overview as views_overview
from postroom_web.views import queue as views_queue
from postroom_web.views import selfservice as views_selfservice
from postroom_web.views import tls_reports as views_tls
from postroom_web.views import users as views_users

MODULES = (api_meta, api_domains, api_users, api_aliases, api_dkim, api_dns, api_account,
           api_tls, api_queue, api_metrics, api_dmarc,
           views_account, views_overview, views_domains, views_domain, views_users,
           views_aliases, views_dkim, views_selfservice, views_mailfilters, views_autoconfig,
           views_tls, views_queue, views_dmarc)


def registry() -> Registry:
    """The registry with every route of the modules above."""
    return REGISTRY
