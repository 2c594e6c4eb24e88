"""``python -m saeguard.bench memory-child SPEC``: one memory measurement in a fresh process."""

from __future__ import annotations

import json
import sys

from saeguard.bench.cost import memory_child


def main(argv: list[str]) -> int:
    """``memory-child SPEC``: one fit-memory measurement in this fresh process (see ``cost.fit_memory``)."""
    if len(argv) != 2 or argv[0] != "memory-child":
        print("usage: python -m saeguard.bench memory-child '<json spec>'", file=sys.stderr)
        return 2
    print(json.dumps(memory_child(json.loads(argv[1]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
