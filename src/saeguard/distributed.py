"""Data-parallel fitting on torch.distributed: ``torchrun --nproc-per-node N -m saeguard fit ...``.

For corpora whose forward passes outgrow one device (issue 17 §4). Every rank
reads and tokenises the whole corpus and builds exactly the batches one process
builds, so chunk boundaries and calibration inputs (seeded, docs/method.md §3)
do not depend on the number of ranks; a :class:`~saeguard.core.statistics.Shard`
only picks which batches a rank runs through the model. The per-latent running
sums are all-reduced (SUM) and the calibration rho all-gathered in input order;
selection, tau and the clamp then run identically on every rank, and only rank 0
should write the artifact.

The result equals the single-process fit: each batch is the same, so its sums and
its rho are the same; only the order in which the float64 per-batch sums are added
differs (relative differences of ~1e-16 in the statistics, none in rho).
``accelerate launch --multi_gpu`` starts the processes through torchrun and works the
same way; on CPUs use torchrun (accelerate's multi-CPU launch goes through mpirun).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from saeguard.config import FitConfig, with_overrides
from saeguard.core.fit import CorpusRole, corpus_statistics, fit_from_statistics, prepare_fit
from saeguard.core.guardrail import Guardrail
from saeguard.core.statistics import FeatureStatistics, Shard
from saeguard.errors import SaeguardError, one_line, require
from saeguard.hf.corpus import CorpusSpec


@dataclass(frozen=True)
class Launch:
    """What ``torchrun`` (or ``accelerate launch``) told this process.

    Attributes:
        rank: this process's rank, 0..world_size-1 (``RANK``).
        world_size: number of processes, at least 2 (``WORLD_SIZE``).
        local_rank: rank on this machine; picks the GPU (``LOCAL_RANK``).
    """

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints and writes."""
        return self.rank == 0


def torchrun_launch(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The multi-process launch this process is part of, read from ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``.

    Args:
        environ: the environment to read (default ``os.environ``).

    Returns:
        None for a plain run and for ``WORLD_SIZE=1`` (the single-process fit).

    Raises:
        SaeguardError: values that are not integers, or ``RANK`` outside ``0..WORLD_SIZE-1``.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    try:
        world = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise SaeguardError(
            "WORLD_SIZE, RANK and LOCAL_RANK must be integers: "
            "start the run with torchrun or accelerate launch"
        ) from None
    require(
        world >= 1 and 0 <= rank < world,
        f"RANK {rank} is outside WORLD_SIZE {world}: start the run with torchrun or accelerate launch",
    )
    return Launch(rank, world, local_rank) if world > 1 else None


def rank_device(launch: Launch, device: str) -> str:
    """The device this rank runs on: ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per process).

    An explicit ``cuda:N``, ``cpu`` or ``mps`` is kept as given.

    Raises:
        SaeguardError: more processes on this machine than CUDA devices.
    """
    if device != "cuda":
        return device
    count = torch.cuda.device_count()
    require(
        launch.local_rank < count,
        f"local rank {launch.local_rank} has no GPU ({count} here): start at most {count} processes "
        "per machine (--nproc-per-node)",
    )
    return f"cuda:{launch.local_rank}"


@contextmanager
def process_group(launch: Launch, device: str) -> Iterator[None]:
    """The default process group for the block: NCCL when ``device`` is CUDA, gloo otherwise.

    The rendezvous address comes from ``MASTER_ADDR``/``MASTER_PORT`` (set by
    torchrun). The group is destroyed when the block ends, also on an error.

    Raises:
        SaeguardError: the group cannot be set up (e.g. no ``MASTER_ADDR``).
    """
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(torch.device(device))
    try:
        dist.init_process_group("nccl" if cuda else "gloo", rank=launch.rank, world_size=launch.world_size)
    except (RuntimeError, ValueError) as error:
        raise SaeguardError(
            f"cannot start the torch.distributed process group ({one_line(error)}): "
            "start the run with torchrun --nproc-per-node N -m saeguard ..."
        ) from None
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block before the other ranks do (downloads, caches, training the default SAE)."""
    if dist.get_rank() != 0:
        dist.barrier()
    yield
    if dist.get_rank() == 0:
        dist.barrier()


def current_shard() -> Shard:
    """This process's :class:`Shard` in the initialised default process group.

    Raises:
        SaeguardError: no process group is initialised.
    """
    require(
        dist.is_available() and dist.is_initialized(),
        "no torch.distributed process group: call torch.distributed.init_process_group first "
        "(or run under torchrun)",
    )
    return Shard(dist.get_rank(), dist.get_world_size())


def _collective_device() -> torch.device:
    """Where collective tensors live: the current GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_statistics(stats: FeatureStatistics) -> FeatureStatistics:
    """Every rank's statistics summed: one all-reduce (SUM) of a (3F + 2,) float64 vector.

    The token and sequence counts travel as float64 too (exact below 2**53).
    Returns new (F,) float64 CPU sums, the same on every rank.
    """
    width = stats.activation_sum.numel()
    counts = torch.tensor([stats.token_count, stats.sequence_count], dtype=torch.float64)
    packed = torch.cat([stats.activation_sum, stats.squared_sum, stats.nonzero_count, counts])
    packed = packed.to(_collective_device(), torch.float64)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    activation_sum, squared_sum, nonzero_count, totals = packed.cpu().split([width, width, width, 2])
    return FeatureStatistics(
        activation_sum.clone(), squared_sum.clone(), nonzero_count.clone(), int(totals[0]), int(totals[1])
    )


def all_gather_rho(local: torch.Tensor) -> torch.Tensor:
    """Every rank's (n_r,) rho concatenated in rank order: (sum of n_r,) on the CPU, the same on every rank.

    Each rank holds a contiguous block of the calibration inputs (:meth:`Shard.span`),
    so rank order is input order. Blocks may differ in length (inputs without a
    counted token are dropped); they are padded to the longest for the all-gather.
    """
    device, world = _collective_device(), dist.get_world_size()
    size = torch.tensor([local.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    lengths = [int(s.item()) for s in sizes]
    longest = max(lengths)
    if longest == 0:
        return local.detach().cpu()
    padded = torch.zeros(longest, dtype=local.dtype, device=device)
    padded[: local.numel()] = local.detach().to(device)
    blocks = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(blocks, padded)
    return torch.cat([block[:n] for block, n in zip(blocks, lengths, strict=True)]).cpu()


def fit_data_parallel(
    model: torch.nn.Module,
    tokenizer: Any,
    sae: Any,
    *,
    forget: CorpusSpec,
    retain: CorpusSpec,
    config: FitConfig | None = None,
    show_progress: bool | None = None,
    **overrides: Any,
) -> Guardrail:
    """:meth:`Guardrail.fit` with the forward passes divided over the ranks of the default process group.

    Call it on every rank with the same arguments (the model on this rank's device);
    every rank returns the same guard. Save it on rank 0 only.

    Args:
        model, tokenizer, sae, forget, retain, config, overrides: as :meth:`Guardrail.fit`
            (there is no statistics cache: each rank's sums are partial).
        show_progress: progress bars; default: on rank 0 only.

    Raises:
        SaeguardError: no process group, or what :meth:`Guardrail.fit` raises.
    """
    started = time.perf_counter()
    shard = current_shard()
    show = shard.rank == 0 if show_progress is None else show_progress
    config = with_overrides(config, overrides)
    inputs = prepare_fit(model, tokenizer, sae, forget, retain, config)
    roles: tuple[CorpusRole, CorpusRole] = ("forget", "retain")
    stats = {
        role: _summed(corpus_statistics(inputs, role, config, show_progress=show, shard=shard), role)
        for role in roles
    }
    result = fit_from_statistics(
        inputs,
        stats["forget"],
        stats["retain"],
        config,
        show_progress=show,
        started=started,
        shard=shard,
        gather_rho=all_gather_rho,
    )
    return Guardrail.from_result(result)


def _summed(partial: FeatureStatistics, role: CorpusRole) -> FeatureStatistics:
    total = all_reduce_statistics(partial)
    require(
        total.token_count > 0,
        f"{role} statistics: the corpus has no document with at least 2 tokens: give it real text",
    )
    return total
