"""Every experiment's default and --quick settings are valid, and JSON settings merge over them."""

from __future__ import annotations

import pytest

from saeguard.errors import SaeguardError
from saeguard.experiments import NAMES, experiment
from saeguard.experiments.ablation import AXES, GATES, AblationConfig
from saeguard.experiments.common import RMU_SETTINGS
from saeguard.experiments.data_efficiency import DataEfficiencyConfig
from saeguard.experiments.relearn import RelearnConfig
from saeguard.experiments.sequential import SequentialConfig, Topic
from saeguard.experiments.settings import settings_dict, settings_from_dict
from saeguard.experiments.zero_shot import ZeroShotConfig


@pytest.mark.parametrize("name", NAMES)
def test_default_and_quick_settings_validate_and_quick_is_smaller(name):
    settings = experiment(name).config
    full, quick = settings(), settings.quick()
    full.validate()
    quick.validate()
    assert quick.fit.max_forget_chunks < full.fit.max_forget_chunks
    assert quick.eval.mcq_limit < full.eval.mcq_limit
    assert settings_from_dict(full, settings_dict(full)) == full  # the saved JSON reads back


def test_quick_keeps_what_each_headline_reads():
    sequential = SequentialConfig.quick()
    assert len(sequential.topics) == 3 and "dsg" in sequential.methods  # no gradient chain (minutes each)
    relearn = RelearnConfig.quick()
    assert {"unguarded", "test-time-dsg", "rmu"} <= set(relearn.variants)
    assert relearn.rmu == RMU_SETTINGS and relearn.checkpoints[0] == 0  # RMU as it unlearned; a start
    data = DataEfficiencyConfig.quick()
    assert {0.05, 1.0} <= set(data.fractions) and len(data.seeds) >= 2 and data.rmu == RMU_SETTINGS
    assert ZeroShotConfig.quick().fisher  # the overlap with the Fisher selection
    ablation = AblationConfig.quick()
    assert all(len(getattr(ablation, axis)) >= 2 for axis in AXES) and set(ablation.gates) == set(GATES)


def test_json_settings_merge_over_the_defaults_and_unknown_keys_are_refused():
    data = {"topics": [{"name": "bio", "forget": ["a.txt"], "mcq": "b.jsonl"}], "fit": {"n_features": 7}}
    merged = settings_from_dict(SequentialConfig(), data)
    assert merged.topics == [Topic("bio", ["a.txt"], "b.jsonl")]
    assert merged.fit.n_features == 7 and merged.fit.layer == SequentialConfig().fit.layer
    with pytest.raises(SaeguardError, match=r"unknown settings.topics\[0\] settings \['title'\]"):
        settings_from_dict(SequentialConfig(), {"topics": [{"title": "bio"}]}, "settings")
    with pytest.raises(SaeguardError, match="unknown experiment 'nope'"):
        experiment("nope")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"utility_target": "high"}, "settings: utility_target must be a number, got 'high'"),
        ({"utility_target": 5}, "settings: utility_target must be at most 1, got 5"),
        ({"utility_target": float("nan")}, "settings: utility_target must be a number, got NaN"),
        ({"utility_target": True}, "settings: utility_target must be a number, got True"),
        ({"methods": "dsg"}, "settings: methods must be a list, got 'dsg'"),
        ({"methods": ["dsg", 3]}, r"settings: methods\[1\] must be a string, got 3"),
        ({"retain": None}, "settings: retain must be a list, got None"),
        ({"gradient": {"rmu": 3}}, "settings: gradient.rmu must be a JSON object, got 3"),
        (
            {"gradient": {"rmu": {"steps": float("inf")}}},
            "gradient.rmu.steps must be a finite number, got Infinity",
        ),
        ({"eval": {"batch_size": 0}}, r"settings.eval: batch_size must be at least 1, got 0"),
        ({"eval": {"mcq_limit": "all"}}, r"settings.eval: mcq_limit must be an integer or None, got 'all'"),
        ({"eval": {"scorer": "logit"}}, r"settings.eval: scorer must be one of 'letter', 'cloze'"),
        ({"topics": [{"name": "bio", "forget": "a.txt", "mcq": "b"}]}, r"topics\[0\]: forget must be a list"),
        (
            {"topics": [{"name": 1, "forget": ["a"], "mcq": "b"}]},
            r"topics\[0\]: name must be a string, got 1",
        ),
        ({"fit": 5}, "settings.fit must be a JSON object of fit settings"),
    ],
)
def test_a_setting_of_the_wrong_type_or_range_is_one_line_naming_it(data, message):
    with pytest.raises(SaeguardError, match=message) as caught:
        settings_from_dict(SequentialConfig(), data, "settings")
    assert "\n" not in str(caught.value)


def test_values_of_the_right_type_are_accepted_as_given():
    merged = settings_from_dict(
        SequentialConfig(),
        {"utility_target": 1, "methods": ["dsg"], "eval": {"mcq_limit": None, "batch_size": 2}},
    )
    assert merged.utility_target == 1 and merged.methods == ["dsg"]
    assert merged.eval.mcq_limit is None and merged.eval.batch_size == 2
    data = settings_from_dict(DataEfficiencyConfig(), {"rmu_fractions": None, "fractions": [0.5, 1]})
    assert data.rmu_fractions is None and data.fractions == [0.5, 1]
