"""`saeguard train-sae` checks its layer, sizes and output before training (issue 11 §4, reliability probe).

Before: ``--layer 99`` gave an IndexError traceback after loading the model, and ``--width 0``
or ``-o FILE`` ran for minutes before failing.
"""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--layer", "99"], "layer 99 is out of range: this model has layers 0..1"),
        (["--layer", "0", "--width", "0"], "Invalid value for '--width'"),
        (["--layer", "0", "--tokens", "0"], "Invalid value for '--tokens'"),
    ],
)
def test_bad_training_settings_are_one_line(cli, workspace, error_lines, extra, named):
    code, out, err = cli(
        ["train-sae", *extra, "-o", str(workspace / "saes"), "--model", str(workspace / "model")]
    )
    lines = [line for line in error_lines(err) if "Writing model shards" not in line]  # the fixture's saves
    assert code == 2 and out == "" and len(lines) == 1 and named in lines[0], err
    assert not (workspace / "saes").exists()


def test_an_output_that_is_a_file_is_refused_before_the_model_loads(cli, workspace, error_lines):
    blocker = workspace / "file"
    blocker.write_text("x")
    code, _, err = cli(
        ["train-sae", "--layer", "0", "-o", str(blocker), "--model", str(workspace / "missing")]
    )
    lines = [line for line in error_lines(err) if "Writing model shards" not in line]
    assert code == 2 and lines == [f"error: --output {blocker} is a file: give a folder path"]
