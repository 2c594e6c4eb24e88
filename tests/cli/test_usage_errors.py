"""Usage errors from the parser itself (issue 11 §4): exit 2, one line, never a traceback."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["fit", "-n", "2.5"], ["'--n-features'", "valid integer", "saeguard fit --help"]),
        (["fit", "--forget", "a.txt", "--output", "out"], ["Missing option", "--retain"]),
        (["nosuchcommand"], ["No such command", "nosuchcommand"]),
        (
            ["generate", "--guard", "g", "--prompt", "p", "--max-new-tokens", "abc"],
            ["--max-new-tokens", "valid integer"],
        ),
        (["fit", "--forget", "a", "--retain", "b", "-o", "o", "--preset", "nope"], ["--preset", "nope"]),
        (
            ["fit", "--forget", "a", "--retain", "b", "-o", "o", "--gate-statistic", "mean"],
            ["--gate-statistic"],
        ),
        (["sweep", "--bogus-option"], ["No such option", "--bogus-option"]),
        (["data", "nosuch"], ["No such command", "nosuch"]),
    ],
)
def test_parser_error_is_one_line_with_exit_code_2(args, names, cli, error_lines):
    code, out, err = cli(args)
    lines = error_lines(err)
    assert code == 2 and out == ""
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    assert all(name in lines[0] for name in names), lines[0]


def test_bare_command_prints_its_help_not_a_traceback(cli):
    code, out, err = cli([])
    assert code == 2 and "Usage: saeguard" in out + err and "Traceback" not in out + err


def test_help_exits_0_and_lists_the_presets(cli):
    code, out, _ = cli(["fit", "--help"])
    assert code == 0 and "--preset" in out and "paper" in out and "demo" in out
