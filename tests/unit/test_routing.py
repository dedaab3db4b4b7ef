"""MX ordering (RFC 5321 section 5.1), the pure part of routing."""

from __future__ import annotations

import random

from postroom_mta.routing import order_mx


def test_hosts_come_in_ascending_preference():
    records = [(30, "c.example"), (10, "a.example"), (20, "b.example")]
    assert order_mx(records, random.Random(1)) == ["a.example", "b.example", "c.example"]


def test_equal_preferences_are_shuffled():
    records = [(10, "a.example"), (10, "b.example"), (5, "first.example")]
    orders = {tuple(order_mx(records, random.Random(seed))) for seed in range(40)}
    assert orders == {("first.example", "a.example", "b.example"),
                      ("first.example", "b.example", "a.example")}


def test_duplicate_hosts_are_tried_once_at_their_best_preference():
    records = [(20, "a.example"), (10, "A.example."), (15, "b.example")]
    assert order_mx(records, random.Random(0)) == ["a.example", "b.example"]
