"""Loading SAEs through SAELens, and the cheap encoder for selected latents.

For ReLU and JumpReLU SAEs latent j depends only on encoder column j, so the
guard keeps just the N selected columns and decoder rows (``SelectedLatents``)
and never touches the full SAE at inference. TopK SAEs need every
pre-activation to know which latents survive, so they keep the full SAE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from saeguard.errors import SaeguardError, one_line, require
from saeguard.hf.fingerprint import tensors_fingerprint
from saeguard.hf.layers import hidden_size

if TYPE_CHECKING:
    from sae_lens import SAE

CHEAP_ARCHITECTURES = ("standard", "jumprelu")
SUPPORTED_ARCHITECTURES = ("standard", "jumprelu", "topk")
_IDENTITY_NORMALISATIONS = ("none", "expected_average_only_in")


def _sae_class() -> type[SAE]:
    """SAELens's SAE base class, imported on first use (the import takes seconds)."""
    from sae_lens import SAE

    return SAE


def load_sae(
    spec: str | Path | SAE | tuple[str, str],
    *,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
) -> SAE:
    """An SAE from a SAELens folder, a ``release:sae_id`` pair, or an SAE object.

    Args:
        spec: a folder with ``cfg.json`` + ``sae_weights.safetensors``, a
            ``"release:sae_id"`` string or ``(release, sae_id)`` tuple resolved by
            SAELens, or an already loaded SAELens ``SAE`` (returned as is).
        device, dtype: where and in which dtype SAELens loads the weights.

    Raises:
        SaeguardError: the folder lacks ``cfg.json`` or does not load, the release
            cannot be resolved, or the SAE is unsupported (:func:`check_supported`).
    """
    if isinstance(spec, _sae_class()):
        sae = spec
    elif isinstance(spec, tuple):
        sae = _from_release(*spec, device=str(device), dtype=dtype)
    else:
        text = str(spec)
        path = Path(text).expanduser()
        if path.is_dir():
            require(
                (path / "cfg.json").is_file(),
                f"SAE folder {path} has no cfg.json: expected the SAELens on-disk format "
                "(cfg.json + sae_weights.safetensors)",
            )
            try:
                sae = _sae_class().load_from_disk(str(path), device=str(device), dtype=dtype)
            except Exception as error:  # noqa: BLE001 - safetensors, JSON and shape errors all mean a bad folder
                raise SaeguardError(
                    f"cannot load the SAE in {path} ({type(error).__name__}: {one_line(error)}): "
                    "check that it is a complete SAELens folder"
                ) from None
        elif ":" in text and not path.exists():
            release, sae_id = text.split(":", 1)
            sae = _from_release(release, sae_id, device=str(device), dtype=dtype)
        else:
            raise SaeguardError(
                f"SAE {text!r} not found: pass a SAELens folder or 'release:sae_id' "
                "(e.g. gemma-scope-2b-pt-res:layer_3/width_16k/average_l0_142)"
            )
    check_supported(sae)
    return sae


def _from_release(release: str, sae_id: str, *, device: str, dtype: str) -> SAE:
    try:
        return _sae_class().from_pretrained(release, sae_id, device=device, dtype=dtype)
    except Exception as error:  # noqa: BLE001 - hub and registry errors vary widely
        raise SaeguardError(
            f"cannot load SAELens release {release!r} id {sae_id!r}: {one_line(error)}; "
            "check the names in sae_lens's pretrained_saes.yaml and that the hub (or its cache) has the files"
        ) from None


def sae_architecture(sae: SAE) -> str:
    """SAELens's architecture name: ``standard`` (ReLU), ``jumprelu``, ``topk``, ..."""
    return str(sae.cfg.architecture())


def check_supported(sae: SAE) -> None:
    """Accept residual-stream ReLU, JumpReLU and TopK SAEs without run-time input normalisation.

    Raises:
        SaeguardError: another architecture, an input normalisation not folded into
            the weights, or an SAE that reads attention heads (``hook_z``).
    """
    arch = sae_architecture(sae)
    require(
        arch in SUPPORTED_ARCHITECTURES,
        f"SAE architecture {arch!r} is not supported: use one of {', '.join(SUPPORTED_ARCHITECTURES)}",
    )
    norm = getattr(sae.cfg, "normalize_activations", "none")
    require(
        norm in _IDENTITY_NORMALISATIONS,
        f"SAE uses run-time input normalisation {norm!r}: fold it into the weights first "
        "(sae.fold_activation_norm_scaling_factor) or use an SAE without it",
    )
    require(
        getattr(sae.cfg, "reshape_activations", "none") == "none",
        "SAE reads attention head outputs (hook_z): saeguard needs a residual-stream SAE",
    )


def check_sae_width(sae: SAE, model: torch.nn.Module) -> None:
    """Fail clearly when ``sae`` reads activations of another width than ``model``'s residual stream.

    Raises:
        SaeguardError: ``sae.cfg.d_in`` differs from the model's hidden size (both named).
    """
    width = hidden_size(model)
    require(
        int(sae.cfg.d_in) == width,
        f"SAE width mismatch: the SAE reads {sae.cfg.d_in}-dim activations but the model's "
        f"hidden size is {width}: use an SAE trained on this model",
    )


def sae_hook_name(sae: SAE) -> str | None:
    """The SAE's recorded ``hook_name`` (e.g. ``blocks.3.hook_resid_post``), or None."""
    metadata = getattr(sae.cfg, "metadata", None)
    name = getattr(metadata, "hook_name", None) if metadata is not None else None
    return str(name) if name else None


def sae_fingerprint(sae: SAE) -> str:
    """16-hex fingerprint of the SAE's weights (:func:`~saeguard.hf.fingerprint.tensors_fingerprint`)."""
    return tensors_fingerprint({k: v for k, v in sae.state_dict().items()})


def sae_source(spec: Any, sae: SAE) -> dict[str, Any]:
    """A JSON description of where the SAE came from, for the artifact."""
    source: dict[str, Any] = {
        "architecture": sae_architecture(sae),
        "d_in": int(sae.cfg.d_in),
        "d_sae": int(sae.cfg.d_sae),
        "hook_name": sae_hook_name(sae),
        "fingerprint": sae_fingerprint(sae),
    }
    if isinstance(spec, tuple):
        source.update(kind="pretrained", release=spec[0], sae_id=spec[1])
    elif isinstance(spec, (str, Path)):
        text = str(spec)
        if Path(text).expanduser().is_dir():
            source.update(kind="disk", path=str(Path(text).expanduser().resolve()))
        else:
            release, sae_id = text.split(":", 1)
            source.update(kind="pretrained", release=release, sae_id=sae_id)
    else:
        source.update(kind="object")
    return source


@torch.no_grad()
def encode_all(sae: SAE, hidden: torch.Tensor) -> torch.Tensor:
    """All latent activations for ``hidden`` (..., d_in) through SAELens's own encode.

    Returns (..., d_sae) in the SAE's dtype; ``hidden`` is cast to it first.
    """
    dtype = sae.W_enc.dtype
    return sae.encode(hidden.to(dtype))


@dataclass
class SelectedLatents:
    """The N selected latents: enough to read and clamp them without the full SAE.

    Tensors follow SAELens (``W_enc`` (d_in, d_sae), ``W_dec`` (d_sae, d_in)) restricted
    to the selected columns and rows, float32. ``full_sae`` is set only for TopK SAEs,
    whose latents depend on all others (docs/method.md §4).
    """

    ids: torch.Tensor  # (N,) int64 latent indices
    encoder: torch.Tensor  # (d, N)
    encoder_bias: torch.Tensor  # (N,)
    decoder: torch.Tensor  # (N, d)
    decoder_bias: torch.Tensor  # (d,)
    threshold: torch.Tensor | None  # (N,) for JumpReLU
    subtract_decoder_bias: bool
    architecture: str
    full_sae: SAE | None = None

    @classmethod
    def from_sae(cls, sae: SAE, ids: torch.Tensor | list[int]) -> SelectedLatents:
        """Copy latents ``ids`` (N,) out of ``sae``: W_enc columns, b_enc, W_dec rows, b_dec, thresholds."""
        index = torch.as_tensor(ids, dtype=torch.long)
        arch = sae_architecture(sae)
        return cls(
            ids=index.clone(),
            encoder=sae.W_enc.detach()[:, index].float().clone(),
            encoder_bias=sae.b_enc.detach()[index].float().clone(),
            decoder=sae.W_dec.detach()[index].float().clone(),
            decoder_bias=sae.b_dec.detach().float().clone(),
            threshold=sae.threshold.detach()[index].float().clone() if arch == "jumprelu" else None,
            subtract_decoder_bias=bool(getattr(sae.cfg, "apply_b_dec_to_input", True)),
            architecture=arch,
            full_sae=None if arch in CHEAP_ARCHITECTURES else sae,
        )

    @property
    def needs_full_sae(self) -> bool:
        """True for TopK SAEs: reading a latent needs every pre-activation."""
        return self.architecture not in CHEAP_ARCHITECTURES

    def to(self, device: torch.device | str) -> SelectedLatents:
        """A copy with every tensor (and the full SAE, if any) on ``device``."""
        moved = {
            name: getattr(self, name).to(device)
            for name in ("ids", "encoder", "encoder_bias", "decoder", "decoder_bias")
        }
        threshold = self.threshold.to(device) if self.threshold is not None else None
        full = self.full_sae.to(device) if self.full_sae is not None else None
        return SelectedLatents(
            **moved,
            threshold=threshold,
            subtract_decoder_bias=self.subtract_decoder_bias,
            architecture=self.architecture,
            full_sae=full,
        )

    def check_runnable(self) -> None:
        """Raises SaeguardError for a TopK guard read without its full SAE (loaded to inspect only)."""
        require(
            self.full_sae is not None or not self.needs_full_sae,
            "this TopK guardrail was loaded without its SAE (to inspect): load it with sae=PATH to use it",
        )

    def activations(self, hidden: torch.Tensor) -> torch.Tensor:
        """f_j(h) for the selected j, shape (..., N), in float32.

        Raises:
            SaeguardError: a TopK guard read without its full SAE (loaded for inspection only).
        """
        if self.full_sae is not None:
            return encode_all(self.full_sae, hidden)[..., self.ids].float()
        self.check_runnable()
        x = hidden.float()
        if self.subtract_decoder_bias:
            x = x - self.decoder_bias
        pre = x @ self.encoder + self.encoder_bias
        acts = torch.relu(pre)
        if self.threshold is not None:
            acts = acts * (pre > self.threshold)
        return acts

    def tensors(self) -> dict[str, torch.Tensor]:
        """Named tensors as the artifact stores them: ``latent_ids``, ``encoder``, ..., ``threshold``."""
        out = {
            "latent_ids": self.ids,
            "encoder": self.encoder,
            "encoder_bias": self.encoder_bias,
            "decoder": self.decoder,
            "decoder_bias": self.decoder_bias,
        }
        if self.threshold is not None:
            out["threshold"] = self.threshold
        return out

    @classmethod
    def from_tensors(
        cls,
        tensors: dict[str, torch.Tensor],
        *,
        architecture: str,
        subtract_decoder_bias: bool,
        full_sae: SAE | None = None,
    ) -> SelectedLatents:
        """Rebuild from :meth:`tensors` output (shapes are checked by the artifact reader); float32 always."""
        threshold = tensors.get("threshold")
        return cls(
            ids=tensors["latent_ids"].long(),
            encoder=tensors["encoder"].float(),
            encoder_bias=tensors["encoder_bias"].float(),
            decoder=tensors["decoder"].float(),
            decoder_bias=tensors["decoder_bias"].float(),
            threshold=None if threshold is None else threshold.float(),
            subtract_decoder_bias=subtract_decoder_bias,
            architecture=architecture,
            full_sae=full_sae,
        )
