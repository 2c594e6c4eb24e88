"""A fresh probe of saeguard's reliability (issue 11): bad input, state and security, CLI and API.

    .venv/bin/python scripts/reliability_probe.py            # all cases, writes docs/reliability.md
    .venv/bin/python scripts/reliability_probe.py --only attach --no-cli --no-report

Builds tiny models, SAEs, corpora and guards in a temporary folder, runs every case (the
command line in background processes while the API cases run here), prints a table of
outcomes per area and writes ``docs/reliability.md``. Exit status 1 when any case is a fault.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.reliability import (  # noqa: E402 - the repository root must be on sys.path first
    cases_artifact,
    cases_cli,
    cases_fit,
    cases_generate,
    cases_inputs,
    cases_server,
    cases_state,
)
from scripts.reliability.fixtures import build  # noqa: E402
from scripts.reliability.framework import Probe  # noqa: E402
from scripts.reliability.report import summary, write_markdown  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only cases whose area or name contains this text")
    parser.add_argument("--no-cli", action="store_true", help="skip the command-line cases")
    parser.add_argument("--no-api", action="store_true", help="skip the in-process API cases")
    parser.add_argument("--no-report", action="store_true", help="do not write docs/reliability.md")
    parser.add_argument("--keep", action="store_true", help="keep the workspace folder (printed)")
    parser.add_argument("--list", action="store_true", help="print every case and what it says")
    args = parser.parse_args()
    started = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="saeguard-probe-")
    print(f"workspace {tmp}: building tiny models, SAEs and guards...", flush=True)
    ws = build(Path(tmp))
    api, cli = Probe(only=args.only), Probe(only=args.only)
    worker = None
    if not args.no_cli:
        worker = threading.Thread(target=cases_cli.run, args=(cli, ws), daemon=True)
        worker.start()
    if not args.no_api:
        for module in (cases_fit, cases_artifact, cases_generate, cases_inputs, cases_state, cases_server):
            print(f"running {module.__name__.rsplit('.', 1)[-1]}...", flush=True)
            module.run(api, ws)
    if worker is not None:
        print("waiting for the command-line cases...", flush=True)
        worker.join()
    results = api.results + cli.results
    elapsed = time.perf_counter() - started
    if args.list:
        for r in results:
            print(f"{r.outcome:<8} {r.area} / {r.name}: {r.message[:220]}")
    print(summary(results))
    print(f"{len(results)} cases in {elapsed / 60:.1f} min")
    if not args.no_report and args.only is None:
        write_markdown(results, REPO / "docs" / "reliability.md", elapsed)
        print("wrote docs/reliability.md")
    if args.keep:
        print(f"workspace kept: {tmp}")
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if any(r.fault for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
