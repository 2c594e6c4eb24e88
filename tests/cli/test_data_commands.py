"""`saeguard data status` says where the default SAE is and whether it is there."""

from __future__ import annotations


def test_status_shows_the_shipped_default_sae(tmp_path, monkeypatch, cli):
    monkeypatch.setenv("SAEGUARD_CACHE", str(tmp_path))
    from saeguard.defaults import SHIPPED_SAE, default_sae_dir

    code, out, _ = cli(["data", "status"])
    assert code == 0 and default_sae_dir().is_relative_to(SHIPPED_SAE)
    assert out.strip().splitlines()[-1] == f"default SAE (--sae default): {default_sae_dir()}: ok"


def test_status_shows_the_default_sae_path_and_state_when_none_ships(tmp_path, monkeypatch, cli):
    monkeypatch.setenv("SAEGUARD_CACHE", str(tmp_path))
    import saeguard.defaults as defaults
    from saeguard.defaults import default_sae_dir

    monkeypatch.setattr(defaults, "SHIPPED_SAE", tmp_path / "nothing-shipped")
    code, out, _ = cli(["data", "status"])
    line = out.strip().splitlines()[-1]
    assert code == 0 and line.startswith(f"default SAE (--sae default): {default_sae_dir()}: not trained yet")
    default_sae_dir().mkdir(parents=True)
    (default_sae_dir() / "cfg.json").write_text("{}")
    _, out, _ = cli(["data", "status"])
    assert out.strip().splitlines()[-1] == f"default SAE (--sae default): {default_sae_dir()}: ok"
