"""Loading every configured provider's driver (docs/drivers.md §6): every provider's problem is reported at
once."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler import app, config, errors

SCRIPTED = 'driver = "fake"\nscript_path = "/nonexistent/script.json"\n'


def configured(tmp_path: Path, text: str, **environ: str) -> config.Config:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return config.load_config(path, environ=environ, resolve_files=False)


def test_good_providers_load() -> None:
    cfg = config.Config.model_validate(
        {
            "providers": {
                "b": {"driver": "fake", "script_path": "/x"},
                "a": {"driver": "fake", "script_path": "/y"},
            }
        }
    )

    loaded = app.load_drivers(cfg)

    assert list(loaded) == ["a", "b"]
    assert loaded["a"].config.id == "a"


def test_every_provider_s_option_problems_are_reported_at_once(tmp_path: Path) -> None:
    cfg = configured(
        tmp_path,
        f'[providers.zeta]\n{SCRIPTED}latencyy = 1\n[providers.alpha]\ndriver = "fake"\n'
        f"[providers.mid]\n{SCRIPTED}",
    )

    with pytest.raises(errors.ConfigError) as caught:
        app.load_drivers(cfg)

    source = tmp_path / "config.toml"
    assert type(caught.value) is errors.ConfigError
    assert str(caught.value).splitlines() == [
        f"{source}: providers.alpha.script_path: required but not set (driver 'fake')",
        f"{source}: providers.zeta.latencyy: unknown key (did you mean 'latency'? accepted: batch, breaker_cooldown, breaker_threshold, driver, "
        "latency, max_concurrency, max_response_bytes, page_size, rate_limit, retry_attempts, retry_max_delay, script_path, timeout) (driver 'fake')",
    ]


def test_a_missing_driver_is_reported_with_the_other_providers_problems(tmp_path: Path) -> None:
    cfg = configured(
        tmp_path,
        f'[providers.b]\ndriver = "nosuch"\n[providers.a]\ndriver = "fake"\n[providers.c]\n{SCRIPTED}'
        '[providers.d]\ndriver = "alsomissing"\n',
    )

    with pytest.raises(errors.DriverLoadError) as caught:  # a driver-load error among them: still exit 2
        app.load_drivers(cfg)

    source = tmp_path / "config.toml"
    lines = str(caught.value).splitlines()
    assert len(lines) == 3, lines
    assert lines[0] == f"{source}: providers.a.script_path: required but not set (driver 'fake')"
    assert lines[1].startswith(
        f"{source}: providers.b.driver: driver 'nosuch' is not installed: no entry point reconciler.drivers:nosuch"
    )
    assert lines[2].startswith(f"{source}: providers.d.driver: driver 'alsomissing' is not installed")
    assert caught.value.entry_point == "reconciler.drivers:nosuch"


def test_a_problem_set_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    cfg = configured(
        tmp_path,
        f"[providers.shop]\n{SCRIPTED}",
        RECONCILER_PROVIDERS__SHOP__LATENCY="fast",
        RECONCILER_PROVIDERS__OTHER__DRIVER="nosuch",
    )

    with pytest.raises(errors.DriverLoadError) as caught:
        app.load_drivers(cfg)

    first, second = str(caught.value).splitlines()
    assert first.startswith("$RECONCILER_PROVIDERS__OTHER__DRIVER: providers.other.driver: driver 'nosuch'")
    assert second.startswith("$RECONCILER_PROVIDERS__SHOP__LATENCY: providers.shop.latency: ")


def test_the_settings_validated_at_load_are_used_and_secret_files_are_read_once(tmp_path: Path) -> None:
    key = tmp_path / "vault-key"
    key.write_text("vault-Key-31\n", encoding="utf-8")
    path = tmp_path / "config.toml"
    path.write_text(
        '[providers.vault]\ndriver = "fake_secrets"\nca_bundle_file = "/etc/ssl/bundle.pem"\n'
        f'access_key_sha256 = "x"\naccess_key_file = "{key}"\n',
        encoding="utf-8",
    )
    cfg = config.load_config(path, environ={}, driver_settings=app.driver_settings)
    key.unlink()

    loaded = app.load_drivers(cfg)

    settings = loaded["vault"].settings
    assert settings is cfg.providers["vault"].settings
    assert getattr(settings, "access_key").get_secret_value() == "vault-Key-31"  # noqa: B009
    assert getattr(settings, "ca_bundle_file") == "/etc/ssl/bundle.pem"  # noqa: B009
