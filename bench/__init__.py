"""roundtable-bench (``bench.cli``): load-tests a roundtable server.

The console script enters here, not in ``bench.cli``: the bench needs libraries that
the server does not (the ``bench`` extra), and an operator who installed roundtable
without it should be told which extra to install, not shown a ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

# Every module the bench imports beyond roundtable's own dependencies, by import name,
# with the distribution that provides it: the `bench` extra in pyproject.toml
# (tests/test_bench.py checks that the two lists and the bench's imports agree).
EXTRA_MODULES: dict[str, str] = {
    "numpy": "numpy",
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
}


def missing_modules() -> list[str]:
    """Distributions of the `bench` extra whose module cannot be imported here."""
    missing = []
    for module, dist in EXTRA_MODULES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(dist)
    return missing


def main(argv: Sequence[str] | None = None) -> int:
    """``roundtable-bench``: say which extra is missing, else run ``bench.cli``."""
    missing = missing_modules()
    if missing:
        print(
            "roundtable-bench needs the `bench` extra, which is not installed here "
            f"(missing: {', '.join(missing)}). Install it with:\n"
            "    pip install 'roundtable[bench]'\n"
            "or, in a checkout, `make install` (it installs the test and bench extras).",
            file=sys.stderr,
        )
        return 2
    from .cli import main as cli_main

    return cli_main(argv)
