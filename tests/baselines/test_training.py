"""The shared loop: batching, determinism, guards, grids and save/load round trips."""

from __future__ import annotations

import json

import pytest
import torch

from saeguard.baselines import (
    PAPER_GRIDS,
    SMALL_GRIDS,
    GAConfig,
    GradDiffConfig,
    NPOConfig,
    RMUConfig,
    TrainConfig,
    grid_configs,
    load_unlearned,
    save_unlearned,
    unlearn,
)
from saeguard.baselines.gradient import mean_nll
from saeguard.baselines.training import BatchCycler, train_loop
from saeguard.errors import SaeguardError
from saeguard.testing import tiny_gpt2, tiny_llama


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
    ("method", "config", "match"),
    [
        ("sgd", None, "unknown unlearning method"),
        ("npo", GAConfig(), "needs a NPOConfig"),
        ("ga", GAConfig(train=_train(steps=0)), "steps"),
        ("ga", GAConfig(train=_train(dtype="int8")), "dtype"),
    ],
)
def test_user_errors_raise(method, config, match, tokenizer, forget_texts, retain_texts):
    with pytest.raises(SaeguardError, match=match):
        unlearn(tiny_llama(0, len(tokenizer)), tokenizer, method, forget_texts, retain_texts, config)


def test_empty_corpus_raises(tokenizer, retain_texts):
    with pytest.raises(SaeguardError, match="no token chunks"):
        unlearn(
            tiny_llama(0, len(tokenizer)),
            tokenizer,
            "ga",
            ["   "],
            retain_texts,
            GAConfig(train=_train()),
        )


def test_paper_and_small_grids():
    sizes = {m: len(grid_configs(m, "paper")) for m in PAPER_GRIDS}
    assert sizes == {"ga": 2, "graddiff": 10, "npo": 12, "rmu": 280}
    for method in SMALL_GRIDS:
        configs = grid_configs(method, "small", base=TrainConfig(device="cpu", seed=7))
        assert 2 <= len(configs) <= 4
        assert all(c.train.steps <= 60 and c.train.seed == 7 for c in configs)
    rmu = grid_configs("rmu", "paper")
    assert isinstance(rmu[0], RMUConfig) and rmu[0].train.learning_rate == 5e-6
    with pytest.raises(SaeguardError, match="not settings"):
        grid_configs("ga", {"beta": (0.1,)})


def test_save_load_round_trip_full(tmp_path, tokenizer, forget_texts, retain_texts, make_batch):
    config = NPOConfig(train=_train(), retain_loss="kl")
    model, result = unlearn(
        tiny_llama(0, len(tokenizer)), tokenizer, "npo", forget_texts, retain_texts, config
    )
    out = save_unlearned(model, tmp_path / "npo", result, config, tokenizer=tokenizer)
    assert not list(out.glob("*.bin")) and list(out.glob("*.safetensors"))
    json.loads((out / "unlearning.json").read_text())
    loaded, record = load_unlearned(out)
    batch = make_batch(forget_texts)
    with torch.no_grad():
        expected = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        got = loaded(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(got, expected)
    assert record.method == "npo" and record.format == "full"
    assert record.config == config and record.result == result
    save_unlearned(model, out, result, config)  # overwriting an artifact is allowed


def test_save_load_round_trip_lora(tmp_path, tokenizer, forget_texts, retain_texts, make_batch):
    config = RMUConfig(train=_train(use_lora=True), layer=1, steering_coeff=5.0)
    model, result = unlearn(
        tiny_gpt2(0, len(tokenizer)), tokenizer, "rmu", forget_texts, retain_texts, config
    )
    out = save_unlearned(model, tmp_path / "rmu", result, config)
    assert (out / "adapter_model.safetensors").is_file()
    with pytest.raises(SaeguardError, match="base_model"):
        load_unlearned(out)
    loaded, record = load_unlearned(out, base_model=tiny_gpt2(0, len(tokenizer)))
    batch = make_batch(forget_texts)
    with torch.no_grad():
        expected = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        got = loaded(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(got, expected)
    assert record.config == config and record.format == "lora"


def test_save_refuses_foreign_folder(tmp_path, tokenizer):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SaeguardError, match="choose a new output path"):
        save_unlearned(tiny_llama(0, len(tokenizer)), tmp_path, None, GAConfig())  # type: ignore[arg-type]
