"""Benchmark settings: which sections run, how big each measurement is, and the targets."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from saeguard.errors import require

SECTIONS = (
    "fit_throughput",
    "fit_memory",
    "guard_overhead",
    "generation",
    "evaluation",
    "setup_cost",
    "bf16",
    "batching",
    "profile",
)

#: target per section: (comparison, value) read as "ratio <= 1.10" etc.
TARGETS: dict[str, tuple[str, float]] = {
    "fit_throughput": ("<=", 1.10),  # statistics pass / bare truncated forward (CPU seconds on the CPU)
    "fit_memory": ("<=", 1.10),  # peak RSS at the largest corpus / peak RSS at 1x
    "guard_overhead": ("<=", 1.01),  # guarded / unguarded forward time (ReLU, JumpReLU)
    "generation": (">=", 0.98),  # guarded / unguarded tokens per second
    "setup_cost": (">=", 20.0),  # RMU run seconds / DSG fit seconds
    "bf16": (">=", 0.90),  # top-N overlap of the selected latents, bf16 vs fp32
}


@dataclass
class BenchSizes:
    """How much work each measurement does (presets: ``full``, ``quick``, ``tiny``)."""

    rounds: int = 5
    fit_seq_len: int = 256
    fit_batch_size: int = 8
    fit_batches: int = 2
    full_forward_rounds: int = 2
    overhead_shapes: tuple[tuple[int, int], ...] = (
        (128, 1),
        (512, 1),
        (1024, 1),
        (128, 8),
        (512, 8),
        (1024, 8),
    )
    overhead_archs: tuple[str, ...] = ("standard", "jumprelu", "topk")
    shape_budget_s: float = 120.0  # end-to-end seconds per shape; past it only the hook is timed
    hook_repeats: int = 20
    memory_chunks: int = 8  # the 1x corpus, in chunks of fit_seq_len tokens
    memory_scales: tuple[int, ...] = (1, 4, 16)
    gen_prompt_tokens: int = 32
    gen_new_tokens: int = 32
    gen_batches: tuple[int, ...] = (1, 8)
    eval_items: int = 16
    eval_batch_size: int = 8
    rmu_steps: int = 150  # RMU's best trade-off in the comparison grid (bench.cost.RMU_BEST)
    rmu_batch_size: int = 4
    rmu_seq_len: int = 128
    dsg_calibration: int = 512
    bf16_batches: int = 2
    bf16_rounds: int = 3  # a bf16 pass is slow on CPUs without bf16 units
    profile_shape: tuple[int, int] = (512, 1)
    profile_repeats: int = 5


PRESETS: dict[str, BenchSizes] = {
    "full": BenchSizes(),
    "quick": BenchSizes(
        rounds=3,
        fit_seq_len=256,
        fit_batches=1,
        full_forward_rounds=1,
        overhead_shapes=((128, 1), (512, 1), (1024, 1), (128, 8)),
        shape_budget_s=45.0,
        hook_repeats=10,
        memory_chunks=8,
        gen_new_tokens=16,
        eval_items=4,
        dsg_calibration=128,
        bf16_batches=1,
        bf16_rounds=2,
        profile_repeats=5,
    ),
    "tiny": BenchSizes(
        rounds=2,
        fit_seq_len=32,
        fit_batch_size=4,
        fit_batches=1,
        full_forward_rounds=1,
        overhead_shapes=((16, 1), (32, 2)),
        shape_budget_s=5.0,
        hook_repeats=3,
        memory_chunks=4,
        memory_scales=(1, 4),
        gen_prompt_tokens=8,
        gen_new_tokens=4,
        gen_batches=(1, 2),
        eval_items=4,
        eval_batch_size=4,
        rmu_steps=2,
        rmu_batch_size=2,
        rmu_seq_len=16,
        dsg_calibration=8,
        bf16_batches=1,
        bf16_rounds=1,
        profile_shape=(16, 1),
        profile_repeats=1,
    ),
}


@dataclass
class BenchConfig:
    """One benchmark run."""

    model: str = "default"  # "default" (SmolLM2-135M) or "tiny" (random, from a config)
    quick: bool = False
    sections: tuple[str, ...] = SECTIONS
    sizes: BenchSizes | None = None  # None: the preset for model/quick
    layer: int | None = None  # None: the default hook layer (tiny: 1)
    d_sae: int | None = None  # None: 4096 (tiny: 256)
    k: int = 32
    n_features: int = 20
    firing_rate: float = 0.03
    threads: int | None = None  # torch intra-op threads; None leaves torch's default
    device: str = "cpu"
    seed: int = 0
    output: Path | None = None
    memory_subprocess: bool = True  # fit_memory in fresh processes (False: in-process, tests)
    extra: dict[str, object] = field(default_factory=dict)

    def resolved_sizes(self) -> BenchSizes:
        """``sizes``, else a copy of the preset for the model (``tiny``) or ``quick``."""
        if self.sizes is not None:
            return self.sizes
        preset = "tiny" if self.model == "tiny" else ("quick" if self.quick else "full")
        return replace(PRESETS[preset])

    def validate(self) -> None:
        """Raises SaeguardError for unknown sections, threads < 1 or a firing rate outside (0, 1)."""
        unknown = set(self.sections) - set(SECTIONS)
        require(not unknown, f"unknown bench sections {sorted(unknown)}: choose from {', '.join(SECTIONS)}")
        require(self.threads is None or self.threads >= 1, f"threads must be >= 1, got {self.threads}")
        require(0 < self.firing_rate < 1, f"firing_rate must be in (0, 1), got {self.firing_rate}")
