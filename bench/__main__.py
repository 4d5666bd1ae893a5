"""One entry point for every benchmark: ``python -m bench`` lists them, ``python -m bench NAME`` runs one.

A benchmark is a module ``bench/bench_<name>.py`` with a docstring (first line: what it measures) and a
``main(argv: list[str]) -> int``. Each prints a table whose figures are ratios to a reference measured in
the same run (fail2ban on the same log, a raw confluent-kafka loop, the 0-ban connection rate), since the
machines are shared and noisy. ``python -m bench all`` runs them one after another with their defaults.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def discover() -> dict[str, str]:
    """Benchmark name -> module name, for every ``bench/bench_*.py``."""
    here = Path(__file__).parent
    return {
        m.name.removeprefix("bench_"): f"bench.{m.name}"
        for m in pkgutil.iter_modules([str(here)])
        if m.name.startswith("bench_")
    }


def _summary(module: str) -> str:
    doc = importlib.import_module(module).__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def main(argv: list[str]) -> int:
    found = discover()
    if not argv or argv[0] in ("-h", "--help", "list"):
        print("usage: python -m bench NAME [ARGS...] | all\n")
        for name in sorted(found):
            print(f"  {name:<16} {_summary(found[name])}")
        return 0
    name, rest = argv[0], argv[1:]
    if name == "all":
        code = 0
        for n in sorted(found):
            print(f"\n=== {n}")
            code |= int(importlib.import_module(found[n]).main([]) or 0)
        return code
    if name not in found:
        print(f"unknown benchmark {name!r}; known: {', '.join(sorted(found))}", file=sys.stderr)
        return 2
    return int(importlib.import_module(found[name]).main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
