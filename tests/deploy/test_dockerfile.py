"""deploy/Dockerfile invariants (no hadolint in Debian): stages, base, user, health."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field

import pytest

from tests.deploy.compose import REPO

DOCKERFILE = REPO / "deploy" / "Dockerfile"
DEV_TOOLS = ("pytest", "ruff", "mypy", "hypothesis", "import-linter", "imapclient", "[dev]")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(text: str) -> list[Stage]:
    """Instructions by stage, continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    stages: list[Stage] = []
    global_args: dict[str, str] = {}
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages:
            # an ARG before the first FROM: a default that FROM lines may name as ${NAME}
            name, _, default = args.strip().partition("=")
            global_args[name] = default
            continue
        if keyword == "FROM":
            match = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.IGNORECASE)
            assert match, line
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], match.group(1))
            stages.append(Stage(base, match.group(2)))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_build_is_multi_stage(stages):
    assert len(stages) >= 2
    assert stages[0].name, "the build stage is named so the final stage can COPY --from it"


def test_every_base_image_is_a_pinned_slim_python(stages):
    for stage in stages:
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?",
                            stage.base), stage.base


def test_base_image_is_a_build_argument_defaulting_to_the_pinned_image():
    """The offline build (docs/deploy-docker.md) swaps the base; the shipped default stays."""
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:\d+\.\d+\.\d+-slim-bookworm$", text, re.M)
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(base == "${BASE_IMAGE}" for base in froms), froms


def test_the_build_stage_runs_on_a_plain_debian_python(stages):
    """Debian's python3 has no `python` command; only the venv's own python may be called."""
    for stage in stages:
        for run in stage.all("RUN"):
            assert not re.search(r"(^|[\s&;])python\s", run), run


def test_offline_wheels_are_optional(stages):
    """The wheel folder exists in the repository (a README), so the default build works."""
    assert (REPO / "deploy" / "wheels" / "README.md").is_file()
    assert "deploy/wheels /wheels" in stages[0].all("COPY")
    assert any("${PIP_ARGS}" in run for run in stages[0].all("RUN"))


def test_base_python_satisfies_requires_python(stages):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    minimum = tuple(int(x) for x in re.findall(r"\d+", project["requires-python"])[:2])
    for stage in stages:
        version = tuple(int(x) for x in re.match(r"python:(\d+)\.(\d+)", stage.base).groups())
        assert version >= minimum


def test_final_stage_runs_as_a_non_root_user(final):
    users = final.all("USER")
    assert users, "no USER in the final stage"
    assert users[-1].split(":")[0] not in ("root", "0")
    keywords = [kw for kw, _ in final.instructions]
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")


def test_final_stage_has_a_healthz_healthcheck(final):
    checks = final.all("HEALTHCHECK")
    assert len(checks) == 1
    assert "/healthz" in checks[0] and "CMD" in checks[0]
    assert "--interval=" in checks[0] and "--timeout=" in checks[0]


def test_entrypoint_is_postroom_in_exec_form(final):
    entrypoint = final.all("ENTRYPOINT")
    assert len(entrypoint) == 1
    assert json.loads(entrypoint[0]) == ["postroom"]


def test_final_stage_installs_nothing_and_copies_only_the_built_environment(final):
    assert not any("pip install" in run for run in final.all("RUN"))
    for copy in final.all("COPY"):
        assert copy.startswith("--from="), f"final stage copies from the build context: {copy}"


def test_no_stage_installs_development_tools(stages):
    for stage in stages:
        for run in stage.all("RUN"):
            if "pip install" in run:
                assert not any(tool in run for tool in DEV_TOOLS), run


def test_no_compilers_in_the_final_stage(final):
    runs = " ".join(final.all("RUN"))
    assert not re.search(r"\b(gcc|build-essential|apt-get install)\b", runs)
