"""Every registered method has a config, a working loss and grids; lookups fail in one line."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from saeguard.baselines import (
    METHODS,
    PAPER_GRIDS,
    SMALL_GRIDS,
    GAConfig,
    MethodConfig,
    RMUConfig,
    TrainConfig,
    get,
    grid_configs,
    names,
    register,
)
from saeguard.baselines.ga import setup as ga_setup
from saeguard.errors import SaeguardError

BUILT_IN = ("ga", "graddiff", "npo", "rmu")


def test_built_in_methods_are_registered_in_order():
    assert names() == BUILT_IN
    assert tuple(METHODS) == tuple(PAPER_GRIDS) == tuple(SMALL_GRIDS) == BUILT_IN


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_method_declares_a_documented_valid_config(name):
    method = get(name)
    assert method.name == name and METHODS[name] is method.config
    assert issubclass(method.config, MethodConfig)
    assert method.config().validate().train == method.config().train
    for spec in dataclasses.fields(method.config):
        assert spec.metadata.get("help"), f"{name}.{spec.name} has no help"


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_method_builds_a_finite_trainable_loss(
    name, tiny_model, make_batch, forget_texts, retain_texts
):
    method = get(name)
    extra = {"layer": 1} if name == "rmu" else {}
    config = method.config(train=TrainConfig(device="cpu"), **extra)
    model, params, loss_fn = method.setup(tiny_model, config)
    loss, logs = loss_fn(model, make_batch(forget_texts), make_batch(retain_texts))
    assert loss.dim() == 0 and math.isfinite(float(loss))
    assert logs and all(math.isfinite(v) for v in logs.values())
    loss.backward()
    assert params and any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params)


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_method_has_paper_and_small_grids(name):
    method = get(name)
    assert method.paper_grid and method.small_grid
    for grid in ("paper", "small"):
        configs = grid_configs(name, grid)
        assert configs and all(type(c) is method.config for c in configs)
        assert all(c.validate() is c for c in configs)


def test_paper_and_small_grid_sizes():
    sizes = {m: len(grid_configs(m, "paper")) for m in PAPER_GRIDS}
    assert sizes == {"ga": 2, "graddiff": 10, "npo": 12, "rmu": 280}
    for method in SMALL_GRIDS:
        configs = grid_configs(method, "small", base=TrainConfig(device="cpu", seed=7))
        assert 2 <= len(configs) <= 4
        assert all(c.train.steps <= 60 and c.train.seed == 7 for c in configs)
    rmu = grid_configs("rmu", "paper")
    assert isinstance(rmu[0], RMUConfig) and rmu[0].train.learning_rate == 5e-6


def test_grid_from_mapping_splits_method_and_train_settings():
    configs = grid_configs("npo", {"beta": (0.1, 1.0), "steps": (3,)}, base=TrainConfig(seed=5))
    assert [(c.beta, c.train.steps, c.train.seed) for c in configs] == [(0.1, 3, 5), (1.0, 3, 5)]


@pytest.mark.parametrize(
    ("grid", "match"),
    [({"beta": (0.1,)}, "not settings of GAConfig"), ("huge", "unknown grid 'huge'")],
)
def test_bad_grids_raise(grid, match):
    with pytest.raises(SaeguardError, match=match):
        grid_configs("ga", grid)


def test_unknown_method_is_one_line_listing_names():
    with pytest.raises(SaeguardError) as caught:
        get("sgd")
    message = str(caught.value)
    assert message == "unknown unlearning method 'sgd': use one of ga, graddiff, npo, rmu"
    assert "\n" not in message


def test_lookup_ignores_case_and_spaces():
    assert get(" NPO ").name == "npo"


def test_register_rejects_taken_names_and_bad_declarations():
    grid = {"learning_rate": (1e-5,)}
    with pytest.raises(SaeguardError, match="'ga' is registered"):
        register("ga", config=GAConfig, setup=ga_setup, paper_grid=grid, small_grid=grid)
    with pytest.raises(SaeguardError, match="lower-case"):
        register("GA2", config=GAConfig, setup=ga_setup, paper_grid=grid, small_grid=grid)
    with pytest.raises(SaeguardError, match="MethodConfig dataclass"):
        register("plain", config=TrainConfig, setup=ga_setup, paper_grid=grid, small_grid=grid)  # type: ignore[arg-type]
    with pytest.raises(SaeguardError, match=r"small_grid keys \['beta'\]"):
        register("ga2", config=GAConfig, setup=ga_setup, paper_grid=grid, small_grid={"beta": (1.0,)})
    assert names() == BUILT_IN


def test_config_round_trips_through_dict():
    config = RMUConfig(train=TrainConfig(steps=3), layer=2, update_layers=(1, 2), alpha=3.0)
    assert RMUConfig.from_dict(dataclasses.asdict(config)) == config
    with pytest.raises(SaeguardError, match="does not match this saeguard version"):
        RMUConfig.from_dict({"gamma": 1.0})


def test_setup_trains_all_weights_without_lora(tiny_model):
    _, params, _ = ga_setup(tiny_model, GAConfig(train=TrainConfig(device="cpu")))
    assert sum(p.numel() for p in params) == sum(p.numel() for p in tiny_model.parameters())
    assert all(isinstance(p, torch.nn.Parameter) for p in params)
