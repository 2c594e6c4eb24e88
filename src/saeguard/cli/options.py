"""Options and checks shared by every command: device, dtype, the SAE, output paths, lengths.

Each is defined once here and used by every command that needs it, so ``fit``,
``generate``, ``eval``, ``sweep``, ``compare`` and ``demo`` read ``--device``,
``--dtype`` and ``--sae`` the same way (the ``--sae`` of a saved TopK guardrail:
:data:`GuardSae`), and check their output, SAE and sequence lengths before any work starts
(issue 11 §4, issue 12 §2/§7).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console

from saeguard.errors import CalibrationWarning, SaeguardError, require

if TYPE_CHECKING:
    from rich.table import Table
    from torch import nn

    from saeguard.config import FitConfig

TorchDtype = Literal["float32", "bfloat16", "float16"]
"""Weight dtypes a command can load a model in."""
AUTO_DEVICE = "auto"
DEFAULT_DTYPE: TorchDtype = "float32"
DEFAULT_SAE = "default"
MODEL_PANEL = "Model"

Device = Annotated[
    str,
    typer.Option(
        help="Where the model runs: cpu, cuda, cuda:1, mps, or auto (cuda when available, else cpu)",
        rich_help_panel=MODEL_PANEL,
    ),
]
Dtype = Annotated[TorchDtype, typer.Option(help="Dtype of the model's weights", rich_help_panel=MODEL_PANEL)]
Model = Annotated[
    str,
    typer.Option(
        help="HF model name or folder; 'default' = the embedded SmolLM2-135M-Instruct",
        rich_help_panel=MODEL_PANEL,
    ),
]
DEFAULT_MODEL = "default"
Sae = Annotated[
    str | None,
    typer.Option(
        help="SAELens folder, release:sae_id, or 'default' (the default model's SAE, trained once and "
        "cached); omitted: 'default' on the default model",
        rich_help_panel=MODEL_PANEL,
    ),
]

GuardSae = Annotated[
    str | None,
    typer.Option(
        "--sae",
        help="A TopK guardrail's full SAE (SAELens folder or release:sae_id); other guardrails need none",
        rich_help_panel=MODEL_PANEL,
    ),
]
"""``--sae`` of the commands that load a saved guardrail (``Guardrail.load(..., sae=...)``)."""


LOG_WIDTH = 160
"""Columns of a table printed to a file or pipe (a terminal keeps its own width)."""


def print_table(console: Console, table: Table) -> None:
    """Print ``table`` whole: at the terminal's width, or :data:`LOG_WIDTH` columns in logs and pipes.

    rich lays out for 80 columns off a terminal, which wraps or cuts table cells (accuracies,
    intervals); a log line may be long.
    """
    if console.is_terminal:
        console.print(table)
    else:
        Console(width=LOG_WIDTH, file=console.file, highlight=False).print(table)


def note(text: str) -> None:
    """A one-line note on stderr (kept apart from results on stdout)."""
    typer.secho(f"note: {text}", fg=typer.colors.YELLOW, err=True)


@contextmanager
def calibration_warnings() -> Iterator[None]:
    """Print each ``CalibrationWarning`` raised in the block as one yellow ``WARNING:`` line on stderr.

    The lines come after the block (after a fit's summary); other warnings are shown as usual.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CalibrationWarning)
        yield
    shown = set()
    for warning in caught:
        if not issubclass(warning.category, CalibrationWarning):
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
        elif str(warning.message) not in shown:
            shown.add(str(warning.message))
            typer.secho(f"WARNING: {warning.message}", fg=typer.colors.YELLOW, err=True)


def resolve_device(spec: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; other names are checked.

    Raises:
        SaeguardError: an unknown device name, or a CUDA/MPS device torch cannot use here.
    """
    import torch

    if spec == AUTO_DEVICE:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise SaeguardError(f"unknown --device {spec!r}: use cpu, cuda, cuda:N, mps or auto") from None
    if device.type == "cuda":
        require(torch.cuda.is_available(), f"--device {spec}: torch sees no CUDA GPU here; use --device cpu")
        index = device.index or 0
        count = torch.cuda.device_count()
        require(index < count, f"--device {spec}: only {count} CUDA device(s) here; use cuda:0..{count - 1}")
    if device.type == "mps":
        require(torch.backends.mps.is_available(), f"--device {spec}: MPS is not available; use cpu")
    return str(device)


def load_cli_model(name: str, device: str, dtype: TorchDtype) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` on ``device`` (``auto`` resolved) in ``dtype``.

    Raises:
        SaeguardError: a bad device, or a model that cannot be loaded.
    """
    import torch

    from saeguard.hf.models import load_model

    return load_model(name, dtype=getattr(torch, dtype), device=resolve_device(device))


def is_default_sae(spec: str | None) -> bool:
    return spec is None or spec == DEFAULT_SAE


def resolve_sae(spec: str | None, model: str) -> str:
    """The SAE a command uses: ``spec``, or the embedded default SAE for ``None``/``"default"``.

    The default SAE belongs to the default model; it is trained on first use
    (about 15 min on 2 cores) and cached (``saeguard data status`` shows where).

    Raises:
        SaeguardError: the default SAE asked for with another model.
    """
    if not is_default_sae(spec):
        return str(spec)
    require(
        model == DEFAULT_MODEL,
        f"no default SAE for model {model!r}: pass --sae DIR (a SAELens folder) or release:sae_id",
    )
    from saeguard.defaults import default_sae_dir, default_sae_ready
    from saeguard.defaults import resolve_sae as resolve_default_sae

    if not default_sae_ready():
        note(f"training the default SAE first (~10-15 min on 2 cores, cached in {default_sae_dir()})")
    return resolve_default_sae(DEFAULT_SAE)


def check_sae(spec: str | None, model: nn.Module) -> None:
    """Load the SAE ``spec`` and check that it reads ``model``'s width, before any work starts.

    Raises:
        SaeguardError: an SAE that does not load, or one of another width (both widths named).
    """
    if spec is None:
        return
    from saeguard.core.sae import check_sae_width, load_sae

    check_sae_width(load_sae(spec), model)


def check_output(path: Path, *, folder: bool, option: str = "--output") -> Path:
    """Check that ``path`` can be written before any work starts; return it expanded.

    A folder must not be a file, a file must not be a folder, no parent may be a
    file, and the nearest existing parent must accept a new entry (probed by
    creating and removing a temporary folder there, so permissions, read-only
    mounts and ACLs all count).

    Raises:
        SaeguardError: one line naming the path, the problem and the fix.
    """
    path = Path(path).expanduser()
    if path.exists():
        if folder:
            require(path.is_dir(), f"{option} {path} is a file: give a folder path")
        else:
            require(not path.is_dir(), f"{option} {path} is a folder: give a file path")
    ancestor = path if folder and path.is_dir() else path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    require(ancestor.is_dir(), f"cannot create {option} {path}: {ancestor} is a file; choose another path")
    try:
        probe = tempfile.mkdtemp(prefix=".saeguard-write-check.", dir=ancestor)
    except OSError as error:
        raise SaeguardError(
            f"cannot write {option} {path}: {ancestor} is not writable ({error.strerror}); "
            "choose another path"
        ) from None
    Path(probe).rmdir()
    return path


def check_replace(path: Path, *, force: bool, is_ours: Callable[[Path], bool], what: str) -> None:
    """Refuse to replace an existing non-empty folder: ``what`` needs ``--force``, anything else a new path.

    Raises:
        SaeguardError: ``path`` holds ``what`` and ``force`` is False, or holds something else.
    """
    if not (path.is_dir() and any(path.iterdir())):
        return
    require(
        is_ours(path),
        f"--output {path} exists and does not hold a {what} alone (replacing it would delete the rest): "
        "choose another path",
    )
    require(force, f"--output {path} already holds a {what}: pass --force to replace it")


LENGTH_OPTIONS = ("seq_len", "calibration_long_tokens", "calibration_answer_tokens")
"""The lengths :func:`fit_length` fits to the model: lowered when a preset chose them, refused when given."""


def fit_length(config: FitConfig, model: nn.Module, *, given: Collection[str]) -> FitConfig:
    """``config`` with its lengths within the model's positions (:func:`max_positions`).

    A length in :data:`LENGTH_OPTIONS` the user gave explicitly (its field name is in
    ``given``, e.g. ``FitSettings.given``) that does not fit is an error; preset or default
    lengths are lowered with a note. The bounds are ``core.fit_inputs.lengths_within``'s.

    Raises:
        SaeguardError: a given ``seq_len`` over the model's positions, or a given
            ``calibration_long_tokens`` (``calibration_answer_tokens`` plus ``prompt_max_tokens``)
            over half of them; the message names the option, the limit and the largest value that fits.
    """
    from saeguard.core.fit_inputs import lengths_within
    from saeguard.hf.layers import max_positions

    limit = max_positions(model)
    fitted, notes = lengths_within(config, limit)
    for name in LENGTH_OPTIONS:
        if name in given and getattr(fitted, name) != getattr(config, name):
            raise SaeguardError(_too_long(config, name, getattr(fitted, name), limit))
    for line in notes:
        note(f"lowered to fit the model: {line}")
    return fitted


def _too_long(config: FitConfig, name: str, most: int, limit: int | None) -> str:
    """The error for a given length ``name`` over ``limit`` positions; ``most`` is the largest that fits."""
    from saeguard.cli.fit_options import option_name

    option, value = option_name(name), getattr(config, name)
    if name == "seq_len":
        return f"{option} {value} is longer than the model's {limit} positions: pass {option} {most} or less"
    what = f"{option} {value}"
    if name == "calibration_answer_tokens":
        what += f" plus prompt_max_tokens {config.prompt_max_tokens}"
    fix = f"{option} {most} or less" if most else f"{option} 0 (off) or a smaller --prompt-max-tokens"
    return (
        f"{what} is longer than half the model's {limit} positions (the chat template needs the rest): "
        f"pass {fix}, or omit it"
    )
