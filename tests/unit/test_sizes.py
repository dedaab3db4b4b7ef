"""postroom.config.parse_size: the one size parser (settings and CLI quotas)."""

from __future__ import annotations

import pytest

from postroom.config import parse_size


@pytest.mark.parametrize(("text", "size"), [
    ("1048576", 1048576),
    ("1024K", 1024 * 1024),
    ("500M", 500 * 1024**2),
    ("2G", 2 * 1024**3),
    ("1.5G", 1610612736),
    ("0.5k", 512),
    ("2g", 2 * 1024**3),
    ("35MB", 35 * 1024**2),
    ("35MiB", 35 * 1024**2),
    (" 1 T ", 1024**4),
])
def test_sizes_with_and_without_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", [
    "", "G", "-5M", "0", "0M", "1.5", "2X", "1e9", "nan", "inf", "1,5G", "2GG", "1.2.3M",
    "9" * 40, "0x10", "½G", "٣G",
])
def test_other_text_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_refusal_names_the_accepted_forms() -> None:
    with pytest.raises(ValueError, match="500M, 2G"):
        parse_size("lots")
