"""RMU steers forget activations toward coeff*u and touches only the chosen MLPs."""

from __future__ import annotations

import pytest
import torch

from saeguard.baselines import RMUConfig, TrainConfig, unlearn
from saeguard.baselines.rmu import masked_mse, mean_cosine, mlp_path, residual_with_grad, steering_direction
from saeguard.errors import SaeguardError
from saeguard.hf.layers import decoder_blocks, residual_at


def _config(**overrides) -> RMUConfig:
    train = TrainConfig(learning_rate=1e-2, steps=10, batch_size=2, seq_len=16, device="cpu")
    settings = dict(train=train, layer=1, steering_coeff=5.0, alpha=1.0)
    settings.update(overrides)
    return RMUConfig(**settings)


def _forget_stats(model, batch, target):
    with torch.no_grad():
        hidden = residual_at(model, 1, batch.input_ids, batch.attention_mask)[batch.counted]
    cos = torch.nn.functional.cosine_similarity(hidden, target.view(1, -1), dim=-1).mean()
    mse = (hidden - target).pow(2).mean()
    return float(cos), float(mse)


def test_rmu_moves_forget_activations_to_target(
    tiny_model, tokenizer, forget_texts, retain_texts, make_batch
):
    config = _config()
    u = steering_direction(32, config.train.seed)
    target = config.steering_coeff * u
    forget = make_batch(forget_texts)
    cos_before, mse_before = _forget_stats(tiny_model, forget, target)
    model, result = unlearn(tiny_model, tokenizer, "rmu", forget_texts, retain_texts, config)
    cos_after, mse_after = _forget_stats(model, forget, target)
    assert cos_after > cos_before + 0.3, (cos_before, cos_after)
    assert mse_after < 0.5 * mse_before, (mse_before, mse_after)
    assert result.logs[-1]["forget_cos"] > result.logs[0]["forget_cos"]
    assert all(torch.isfinite(torch.tensor(log["retain_mse"])) for log in result.logs)


def test_rmu_changes_only_chosen_mlp_weights(tiny_model, tokenizer, forget_texts, retain_texts):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    config = _config(layer=1, update_layers=(1,))
    mlp = mlp_path(tiny_model, 1)
    model, result = unlearn(tiny_model, tokenizer, "rmu", forget_texts, retain_texts, config)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "no weight moved"
    assert all(k.startswith(mlp + ".") for k in changed), changed
    mlp_weights = {k for k in before if k.startswith(mlp + ".") and k.endswith("weight")}
    assert mlp_weights <= changed
    assert result.trainable_params == sum(p.numel() for p in model.get_submodule(mlp).parameters())


def test_default_update_layers_are_up_to_hook_layer(tiny_model, tokenizer, forget_texts, retain_texts):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    model, _ = unlearn(tiny_model, tokenizer, "rmu", forget_texts, retain_texts, _config(layer=0))
    changed = {k for k in before if not torch.equal(before[k], model.state_dict()[k])}
    assert changed and all(k.startswith(mlp_path(model, 0) + ".") for k in changed)


def test_rmu_lora_targets_only_mlp(tiny_model, tokenizer, forget_texts, retain_texts):
    config = _config(
        train=TrainConfig(learning_rate=3e-2, steps=4, batch_size=2, seq_len=16, device="cpu", use_lora=True)
    )
    model, _ = unlearn(tiny_model, tokenizer, "rmu", forget_texts, retain_texts, config)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(".mlp." in n and "lora_" in n for n in trained), trained


def test_residual_with_grad_matches_residual_at(tiny_model, forget_texts, make_batch):
    batch = make_batch(forget_texts)
    live = residual_with_grad(tiny_model, 1, batch)
    assert live.requires_grad
    frozen = residual_at(tiny_model, 1, batch.input_ids, batch.attention_mask)
    torch.testing.assert_close(live.detach(), frozen)


def test_steering_direction_is_seeded_unit_vector():
    u = steering_direction(64, 3)
    assert float(u.norm()) == pytest.approx(1.0, rel=1e-6)
    assert torch.equal(u, steering_direction(64, 3))
    assert not torch.equal(u, steering_direction(64, 4))


def test_update_layers_past_hook_layer_raise(tiny_model, tokenizer, forget_texts, retain_texts):
    with pytest.raises(SaeguardError, match="update_layers"):
        unlearn(
            tiny_model,
            tokenizer,
            "rmu",
            forget_texts,
            retain_texts,
            _config(layer=0, update_layers=(0, 1)),
        )


def test_block_without_mlp_raises(tiny_model):
    block = decoder_blocks(tiny_model)[0]
    block._modules["feed_forward"] = block._modules.pop("mlp")
    with pytest.raises(SaeguardError, match="MLP"):
        mlp_path(tiny_model, 0)


def test_masked_mse_and_cosine_skip_uncounted_tokens():
    u = torch.tensor([0.6, 0.8])
    hidden = torch.stack([3 * u, torch.tensor([-5.0, 0.0])]).view(1, 2, 2)
    mask = torch.tensor([[True, False]])
    assert float(masked_mse(hidden, 3 * u.view(1, 1, -1), mask)) == pytest.approx(0.0, abs=1e-6)
    assert mean_cosine(hidden, u, mask) == pytest.approx(1.0, rel=1e-6)
    assert mean_cosine(hidden, u, torch.tensor([[True, True]])) == pytest.approx((1.0 - 0.6) / 2, rel=1e-5)


def test_update_layers_from_json_become_a_tuple():
    assert RMUConfig(update_layers=[1, 2]).update_layers == (1, 2)
