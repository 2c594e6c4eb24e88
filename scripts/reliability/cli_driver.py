"""Run many `saeguard` command lines in one process (the CLI's start-up costs ~5-30 s per process).

``python -m scripts.reliability.cli_driver CASES.json RESULTS.json``: CASES is a list of argv
lists (or ``{"argv": [...], "seconds": N}`` with its own time limit); each runs through
``saeguard.cli.main`` exactly as the console script does, with stdout and stderr captured. An
exception escaping ``main`` is printed as Python would print it (a traceback, exit status 1), so
the parent classifies it like a real process's output.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
import time
import traceback
import warnings

CASE_SECONDS = int(os.environ.get("SAEGUARD_PROBE_CASE_SECONDS", "150"))
"""A bad-input case still running after this long works before it checks: stopped, exit status 124.
Cases that may succeed (real work on two busy cores) get :data:`WORK_SECONDS`."""
WORK_SECONDS = 900


class CaseTimeout(BaseException):
    """Raised by the alarm inside a case that ran past :data:`CASE_SECONDS`."""


def _alarm(_signum: int, _frame: object) -> None:
    raise CaseTimeout


def run_one(argv: list[str], seconds: int = CASE_SECONDS) -> dict:
    from saeguard.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    started = time.perf_counter()
    sys.argv = ["saeguard", *argv]
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        try:  # the interpreter's default warning filters, as in a real `saeguard` process
            main()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except CaseTimeout:
            print(f"still running after {seconds} s: stopped", file=sys.stderr)
            code = 124
        except BaseException:  # noqa: BLE001 - what the interpreter would print
            traceback.print_exc()
            code = 1
        finally:
            signal.alarm(0)
    return {
        "code": code,
        "out": out.getvalue(),
        "err": err.getvalue(),
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    cases_path, results_path = sys.argv[1], sys.argv[2]
    with open(cases_path, encoding="utf-8") as handle:
        cases = json.load(handle)
    results = [
        run_one(case["argv"], case["seconds"]) if isinstance(case, dict) else run_one(case) for case in cases
    ]
    with open(results_path, "w", encoding="utf-8") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    main()
