"""Share of public functions and classes with a docstring, per package of ``src/saeguard``.

Public means: a module-level function or class, or a method or property of a
public class, whose name does not start with an underscore (dunder methods such
as ``__init__`` are not counted; nested functions are not counted). Functions
inside private modules (``_name.py``) count like any other. Only the source is
parsed (``ast``); nothing is imported, so the script runs without the package's
dependencies.

    python scripts/docstring_coverage.py                 # table per package
    python scripts/docstring_coverage.py --missing       # also list what lacks one
    python scripts/docstring_coverage.py --fail-under 80 # exit 1 below 80% overall
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "saeguard"
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


@dataclass
class Tally:
    """Documented and total public definitions of one package, and the undocumented names."""

    documented: int = 0
    total: int = 0
    missing: list[str] = field(default_factory=list)

    def add(self, name: str, has_docstring: bool) -> None:
        self.total += 1
        if has_docstring:
            self.documented += 1
        else:
            self.missing.append(name)

    @property
    def share(self) -> float:
        return self.documented / self.total if self.total else 1.0


def is_public(name: str) -> bool:
    """Not ``_private`` and not a ``__dunder__``."""
    return not name.startswith("_")


def package_of(path: Path, root: Path) -> str:
    """``saeguard`` for top-level modules, ``saeguard.<sub>`` for modules of a subpackage."""
    parts = path.relative_to(root).parts
    return "saeguard" if len(parts) == 1 else f"saeguard.{parts[0]}"


def public_definitions(tree: ast.Module) -> list[tuple[str, ast.AST]]:
    """(qualified name, node) of every public module-level definition and public-class member."""
    found: list[tuple[str, ast.AST]] = []
    for node in tree.body:
        if not isinstance(node, _DEFINITIONS) or not is_public(node.name):
            continue
        found.append((node.name, node))
        if isinstance(node, ast.ClassDef):
            for member in node.body:
                if isinstance(member, _DEFINITIONS) and is_public(member.name):
                    found.append((f"{node.name}.{member.name}", member))
    return found


def coverage(root: Path = ROOT) -> dict[str, Tally]:
    """Tally per package of every ``.py`` file under ``root``."""
    tallies: dict[str, Tally] = defaultdict(Tally)
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        tally = tallies[package_of(path, root)]
        for name, node in public_definitions(tree):
            tally.add(f"{module}.{name}", ast.get_docstring(node) is not None)
    return dict(sorted(tallies.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="package folder (default: src/saeguard)")
    parser.add_argument("--missing", action="store_true", help="list public names without a docstring")
    parser.add_argument("--fail-under", type=float, default=None, help="exit 1 if the overall %% is lower")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} is not a folder: pass --root src/saeguard", file=sys.stderr)
        return 2
    tallies = coverage(args.root)
    overall = Tally()
    print(f"{'package':<20} {'documented':>10} {'public':>7} {'share':>7}")
    for package, tally in tallies.items():
        print(f"{package:<20} {tally.documented:>10} {tally.total:>7} {tally.share:>7.0%}")
        overall.documented += tally.documented
        overall.total += tally.total
        overall.missing.extend(tally.missing)
    print(f"{'all':<20} {overall.documented:>10} {overall.total:>7} {overall.share:>7.0%}")
    if args.missing:
        print("\nwithout a docstring:")
        for name in overall.missing:
            print(f"  {name}")
    if args.fail_under is not None and overall.share * 100 < args.fail_under:
        print(f"docstring coverage {overall.share:.0%} is below {args.fail_under:g}%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
