"""docs/architecture.md's module map names every module of the tree, and only modules."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
# a module name in backquotes: postroom.x.y or postroom_service.x
_NAME = re.compile(r"`(postroom(?:_[a-z0-9]+)?(?:\.[A-Za-z0-9_]+)*)`")


def _package_roots() -> list[Path]:
    """shared/postroom and every services/*/postroom_* package."""
    return [ROOT / "shared" / "postroom",
            *sorted(p for p in (ROOT / "services").glob("*/postroom_*") if p.is_dir())]


def modules_in_tree() -> set[str]:
    """Every module and subpackage, by dotted name; the top packages and the Alembic
    scripts under ``postroom.store.migrations`` (named by that package) aside."""
    found: set[str] = set()
    for root in _package_roots():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root.parent).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if "__pycache__" in parts or len(parts) == 1:
                continue
            if parts[:3] == ["postroom", "store", "migrations"] and len(parts) > 3:
                continue
            found.add(".".join(parts))
    return found


def names_in_map(text: str) -> set[str]:
    """The module names in the "Module map" section (up to the next level-2 heading)."""
    start = text.index("\n## Module map\n")
    end = text.find("\n## ", start + 1)
    return set(_NAME.findall(text[start:end if end >= 0 else None]))


def test_every_module_is_in_the_map() -> None:
    missing = modules_in_tree() - names_in_map(DOC.read_text())
    assert not missing, f"add to docs/architecture.md's module map: {sorted(missing)}"


def test_every_name_in_the_map_is_a_module() -> None:
    stale = names_in_map(DOC.read_text()) - modules_in_tree()
    assert not stale, f"not modules (moved or removed?): {sorted(stale)}"


def test_the_check_sees_the_whole_tree() -> None:
    # guard the guard: a wrong root would make both tests above pass on nothing
    tree = modules_in_tree()
    assert {"postroom.config", "postroom.store.db", "postroom.store.migrations",
            "postroom_imap.protocol", "postroom_mta.relay"} <= tree
    assert not any(name.startswith("postroom.store.migrations.") for name in tree)
    assert len(tree) > 130


def test_a_module_left_out_is_found() -> None:
    text = DOC.read_text().replace("`postroom.glob`", "glob")
    assert "postroom.glob" not in names_in_map(text)
