"""The shared loop: batching, determinism, cost records, LoRA, guards and settings checks."""

from __future__ import annotations

import pytest
import torch

from saeguard.baselines import GAConfig, GradDiffConfig, TrainConfig, unlearn
from saeguard.baselines.likelihood import mean_nll
from saeguard.baselines.training import BatchCycler, train_loop
from saeguard.errors import SaeguardError
from saeguard.testing import tiny_llama


def _train(**overrides) -> TrainConfig:
    settings = dict(learning_rate=1e-2, steps=4, batch_size=2, seq_len=16, device="cpu")
    settings.update(overrides)
    return TrainConfig(**settings)


def test_cycler_cycles_pads_and_masks_specials():
    chunks = [[2, 10, 11, 3], [2, 12], [2, 13, 14]]
    cycler = BatchCycler(chunks, 2, pad_id=0, special_ids={0, 2, 3}, device=torch.device("cpu"), seed=1)
    seen = []
    for _ in range(3):  # 6 rows = two full passes over 3 chunks
        batch = next(cycler)
        assert batch.input_ids.shape[0] == 2
        for row, mask, counted in zip(batch.input_ids, batch.attention_mask, batch.counted, strict=True):
            real = row[mask.bool()].tolist()
            seen.append(real)
            assert not any(t in (0, 2, 3) for t in row[counted].tolist())
    assert sorted(seen[:3]) == sorted(chunks) and sorted(seen[3:]) == sorted(chunks)


def test_training_is_deterministic_for_a_seed(tokenizer, forget_texts, retain_texts):
    runs = []
    for seed in (0, 0, 1):
        config = GradDiffConfig(train=_train(seed=seed))
        model, result = unlearn(
            tiny_llama(0, len(tokenizer)), tokenizer, "graddiff", forget_texts, retain_texts, config
        )
        runs.append((result.losses, model.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    assert runs[0][0] != runs[2][0]


def test_result_records_cost(tokenizer, forget_texts, retain_texts):
    _, result = unlearn(
        tiny_llama(0, len(tokenizer)),
        tokenizer,
        "ga",
        forget_texts,
        retain_texts,
        GAConfig(train=_train()),
    )
    assert len(result.losses) == len(result.step_seconds) == 4
    assert result.wall_seconds > 0 and result.peak_rss_mb > 0
    assert result.trainable_params > 0 and result.forget_chunks > 0 and result.retain_chunks > 0


def test_lora_trains_only_adapters(tiny_model, tokenizer, forget_texts, retain_texts, make_batch):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    forget = make_batch(forget_texts)
    with torch.no_grad():
        nll_before = float(mean_nll(tiny_model, forget))
    config = GAConfig(train=_train(use_lora=True, learning_rate=5e-2, steps=6))
    model, _ = unlearn(tiny_model, tokenizer, "ga", forget_texts, retain_texts, config)
    base = model.get_base_model()
    for name, value in base.state_dict().items():
        if "lora_" not in name:
            assert torch.equal(value, before[name.replace(".base_layer", "")]), name
    with torch.no_grad():
        assert float(mean_nll(model, forget)) > nll_before + 0.05


def test_exploding_loss_stops_with_a_fix(tokenizer):
    model = tiny_llama(0, len(tokenizer))
    params = list(model.parameters())
    batches = iter(lambda: None, 1)

    def loss_fn(_m, _f, _r):
        return params[0].sum() * float("nan"), {}

    with pytest.raises(SaeguardError, match="lower learning_rate"):
        train_loop(model, params, batches, batches, loss_fn, _train(), method="ga")


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"steps": 0}, "steps must be at least 1"),
        ({"learning_rate": 0.0}, "learning_rate must be greater than 0"),
        ({"dtype": "int8"}, "dtype must be one of 'float32', 'bfloat16', 'float16'"),
        ({"max_grad_norm": 0.0}, "max_grad_norm must be greater than 0"),
        ({"weight_decay": -0.1}, "weight_decay must be at least 0"),
        ({"steps": 4.0}, "steps must be an integer"),
    ],
)
def test_train_config_checks_fields_from_declarations(settings, match):
    with pytest.raises(SaeguardError, match=match):
        TrainConfig(**settings).validate()


def test_train_config_defaults_validate_and_allow_no_clipping():
    config = TrainConfig(max_grad_norm=None)
    assert config.validate() is config
    assert config.torch_dtype() == torch.float32


def test_nested_train_settings_are_checked():
    with pytest.raises(SaeguardError, match="batch_size must be at least 1"):
        GAConfig(train=TrainConfig(batch_size=0)).validate()
