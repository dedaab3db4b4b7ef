"""Run the atheris fuzz targets for a while each: `make fuzz` (FUZZ_SECONDS=60 per target).

    python bench/fuzz/run.py                       # every target, 60 s each
    python bench/fuzz/run.py smtp-data -t 600      # one target, ten minutes
    python bench/fuzz/run.py --replay crash-XXXX   # run a saved input through every target

Each target runs in a child process (libFuzzer owns the process and exits on
a crash); a crash leaves ``crash-*`` in bench/fuzz/artifacts/ and makes this
script exit non-zero. Every crash found must become a regression test.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT)]

CHILD = """
import sys
import atheris
with atheris.instrument_imports():
    from bench.fuzz.targets import TARGETS
target = TARGETS[sys.argv[1]]
atheris.Setup(sys.argv[1:2] + sys.argv[2:], target)
atheris.Fuzz()
"""


def fuzz(name: str, seconds: int) -> int:
    artifacts = HERE / "artifacts" / name
    corpus = HERE / "corpus" / name
    artifacts.mkdir(parents=True, exist_ok=True)
    corpus.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-c", CHILD, name, f"-max_total_time={seconds}",
            "-max_len=8192", "-rss_limit_mb=1024", "-timeout=10",
            f"-artifact_prefix={artifacts}/", str(corpus)]
    print(f"== {name}: {seconds}s", flush=True)
    return subprocess.call(argv, cwd=ROOT)


def replay(path: Path) -> int:
    from bench.fuzz.targets import TARGETS

    data = path.read_bytes()
    for name, target in TARGETS.items():
        print(f"== {name}", flush=True)
        target(data)
    return 0


def main() -> int:
    from bench.fuzz.targets import TARGETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", choices=[*TARGETS, []], default=[])
    parser.add_argument("-t", "--seconds", type=int, default=60)
    parser.add_argument("--replay", type=Path)
    args = parser.parse_args()
    if args.replay:
        return replay(args.replay)
    failed = [name for name in (args.targets or list(TARGETS)) if fuzz(name, args.seconds)]
    print("crashes in: " + ", ".join(failed) if failed else "no crash found")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
