"""The rho histogram's axis follows the gate statistic and the data; nothing is clipped."""

from __future__ import annotations

from saeguard.report.figures import plot_rho, rho_label, rho_range


def test_fraction_statistic_spans_zero_to_one():
    assert rho_range("fraction", [0.1, 0.3], tau=0.2) == (0.0, 1.0)
    assert "fraction of counted tokens" in rho_label("fraction")


def test_activation_statistic_range_covers_the_data():
    low, high = rho_range("activation", [0.05, 1.6, 2.2], tau=0.4)
    assert low == 0.0 and high > 2.2
    assert "fraction" not in rho_label("activation") and "mu_j" in rho_label("activation")


def test_unknown_statistic_uses_the_data_and_tau():
    low, high = rho_range(None, [0.1, 0.2], tau=3.0)
    assert low == 0.0 and 3.0 < high <= 3.0 * 1.06
    assert rho_label(None) == "rho (gate statistic)"
    assert rho_range(None, [], None) == (0.0, 1.0)


def test_a_fraction_outside_zero_to_one_is_not_clipped():
    assert rho_range("fraction", [0.5, 1.4])[1] > 1.4


def test_plot_rho_writes_a_png(tmp_path):
    path = plot_rho(
        {"forget": [1.6, 2.2], "retain": [0.1], "empty": []},
        0.4,
        tmp_path / "rho.png",
        statistic="activation",
    )
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 5000
