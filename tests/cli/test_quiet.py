"""Other libraries' warnings and log lines stay off a command's stderr; saeguard's own still show."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from saeguard.cli import quiet
from saeguard.errors import CalibrationWarning

SITE = "/venv/lib/python3.11/site-packages"
OURS = str(quiet.PACKAGE / "core" / "guardrail.py")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LOGGERS = ("", "saeguard", *quiet.LIBRARY_VERBOSITY, *quiet.LIBRARY_LOGGERS)


@pytest.fixture
def restored(monkeypatch) -> Iterator[None]:
    """Undo what ``main()`` sets process-wide: the libraries' verbosity variables and logger levels."""
    for variable in quiet.LIBRARY_VERBOSITY.values():
        monkeypatch.delenv(variable, raising=False)
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize(
    ("category", "filename", "issuer", "shown"),
    [
        (CalibrationWarning, f"{SITE}/somewhere.py", None, True),  # saeguard's class, wherever attributed
        (UserWarning, OURS, OURS, True),  # e.g. settings an artifact holds that this version ignores
        (UserWarning, OURS, None, True),  # replayed after a block: the issuer is not known
        (DeprecationWarning, f"{SITE}/sae_lens/load_model.py", None, False),  # the probe's fault
        (FutureWarning, f"{SITE}/transformers/generation/utils.py", None, False),
        (UserWarning, f"{SITE}/torch/nn/modules/module.py", None, False),
        (UserWarning, OURS, f"{SITE}/torch/serialization.py", False),  # stacklevel=2 onto our caller
        (DeprecationWarning, OURS, OURS, False),  # for developers, whoever issues it
        (ResourceWarning, OURS, OURS, False),
    ],
)
def test_only_saeguards_own_warnings_are_shown(category, filename, issuer, shown):
    assert quiet.is_saeguard_warning(category, filename, issuer) is shown


def _noisy_command() -> None:
    """What a command's libraries may do: warn, log; and what saeguard does: warn."""
    warnings.warn_explicit(
        "The 'utils' module has been deprecated",
        DeprecationWarning,
        f"{SITE}/sae_lens/load_model.py",
        7,
        module="sae_lens.load_model",
    )
    warnings.warn_explicit("TypedStorage is deprecated", UserWarning, f"{SITE}/torch/storage.py", 3)
    warnings.warn_explicit(
        "`resume_download` is deprecated", FutureWarning, f"{SITE}/huggingface_hub/file_download.py", 9
    )
    warnings.warn("the retain side is too small to calibrate on:\nadd retain text", CalibrationWarning)  # noqa: B028
    logging.getLogger("sae_lens").warning("sae_lens log line")
    logging.getLogger("transformers.generation.utils").warning("Setting `pad_token_id` to `eos_token_id`")
    logging.getLogger("datasets.builder").warning("datasets log line")


def test_a_command_shows_saeguards_warnings_as_one_line_each_and_nothing_else(
    cli, monkeypatch, restored, caplog
):
    import saeguard.data.corpora

    monkeypatch.setattr(saeguard.data.corpora, "available_corpora", lambda: _noisy_command() or ["wiki"])
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # every warning reaches the command's display
        code, out, err = cli(["data", "list"])
    assert code == 0 and out == "wiki\n"
    assert err.splitlines() == ["WARNING: the retain side is too small to calibrate on: add retain text"]
    assert [r.name for r in caplog.records] == []  # no library log record passed its logger's level


def test_inspect_shows_the_settings_an_artifact_holds_that_it_ignores(cli, tmp_path, restored):
    guard = tmp_path / "guard"
    shutil.copytree(FIXTURES / "guardrail-v0.1.0", guard)
    meta = json.loads((guard / "guardrail.json").read_text())
    meta["config"]["future_setting"] = 1
    (guard / "guardrail.json").write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code, out, err = cli(["inspect", str(guard)])
    assert code == 0 and "tau" in out
    assert [line for line in err.splitlines() if "future_setting" in line] == [
        f"WARNING: {guard / 'guardrail.json'}: config: ignoring unknown settings future_setting "
        "(written by another saeguard version)"
    ]


def test_a_command_keeps_saeguards_loggers_and_a_verbosity_the_user_chose(cli, monkeypatch, restored):
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")
    logging.getLogger("transformers").setLevel(logging.INFO)
    cli(["data", "list"])
    assert logging.getLogger("saeguard.server").isEnabledFor(logging.WARNING)
    assert not logging.getLogger("sae_lens").isEnabledFor(logging.WARNING)
    assert not logging.getLogger("datasets").isEnabledFor(logging.WARNING)
    assert logging.getLogger("transformers").isEnabledFor(logging.INFO)  # TRANSFORMERS_VERBOSITY=info


def test_python_w_option_leaves_warnings_to_python(monkeypatch, restored):
    shown = warnings.showwarning
    monkeypatch.setattr("sys.warnoptions", ["default"])
    quiet.quiet_libraries()
    assert warnings.showwarning is shown


def test_package_is_the_saeguard_folder():
    assert (quiet.PACKAGE / "cli" / "quiet.py").is_file() and Path(OURS).is_file()
