"""The DMARC pages' range picker and the API's range, and who may see a domain's data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from postroom.store.dmarcstats import RangeError
from postroom.store.webaccess import Principal
from postroom_web.dmarc.console import api_range, may_see, page_range

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)


def test_the_api_range_defaults_to_the_last_seven_days():
    assert api_range(None, None, NOW) == (NOW - timedelta(days=7), NOW)
    end = datetime(2026, 3, 1, tzinfo=UTC)
    assert api_range(None, end, NOW) == (end - timedelta(days=7), end)


def test_a_time_without_a_zone_is_utc_and_other_zones_are_converted():
    start, end = api_range(datetime(2026, 3, 1), datetime(2026, 3, 2, 1, tzinfo=timezone(
        timedelta(hours=1))), NOW)
    assert start == datetime(2026, 3, 1, tzinfo=UTC) and end == datetime(2026, 3, 2, tzinfo=UTC)
    assert end.tzinfo is UTC


@pytest.mark.parametrize(("start", "end"), [
    (datetime(2026, 3, 2), datetime(2026, 3, 1)),          # backwards
    (datetime(2020, 1, 1), datetime(2026, 1, 1)),          # over 400 days
    (None, datetime(1, 1, 3)),                             # 7 days before year 1
    (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))), None),  # before year 1 in UTC
])
def test_unusable_api_ranges_are_refused(start, end):
    with pytest.raises(RangeError):
        api_range(start, end, NOW)


def test_the_page_ranges_are_the_last_hours_or_days():
    assert (page_range({}, NOW).choice, page_range({}, NOW).start) == (
        "7d", NOW - timedelta(days=7))
    day = page_range({"range": "24h"}, NOW)
    assert (day.start, day.end, day.error) == (NOW - timedelta(hours=24), NOW, None)
    assert page_range({"range": "30d"}, NOW).first_day == "2026-02-08"


def test_a_custom_page_range_is_whole_utc_days_both_included():
    r = page_range({"range": "custom", "from": "2026-03-01", "to": "2026-03-03"}, NOW)
    assert (r.choice, r.start, r.end) == ("custom", datetime(2026, 3, 1, tzinfo=UTC),
                                          datetime(2026, 3, 4, tzinfo=UTC))
    assert (r.first_day, r.last_day) == ("2026-03-01", "2026-03-03")


@pytest.mark.parametrize("args", [
    {"range": "custom", "from": "2026-03-05", "to": "2026-03-01"},
    {"range": "custom", "from": "2020-01-01", "to": "2026-03-01"},
    {"range": "custom", "from": "x", "to": ""},
    {"range": "custom"},
    {"range": "1y"},
])
def test_a_range_the_page_cannot_show_falls_back_to_seven_days_with_an_error(args):
    r = page_range(args, NOW)
    assert r.choice == "7d" and r.end == NOW and r.error


def test_managers_see_their_domains_and_subdomains_admins_every_domain():
    manager = Principal(kind="user", name="boss@example.org", user_id=1, is_admin=False,
                        domains=frozenset({"example.org"}))
    assert may_see(manager, "example.org") and may_see(manager, "mail.example.org")
    assert not may_see(manager, "notexample.org") and not may_see(manager, "gmail.com")
    admin = Principal(kind="user", name="root@example.org", user_id=2, is_admin=True)
    assert may_see(admin, "gmail.com")
