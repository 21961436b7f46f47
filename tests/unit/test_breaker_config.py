"""Issue 12: the outage breaker's two `[providers.<id>]` keys, `breaker_threshold` and `breaker_cooldown`."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from reconciler import config, driver_api, errors

REPO_ROOT = Path(__file__).resolve().parents[2]
PROVIDER = '[providers.shop]\ndriver = "fake"\n'


def load(tmp_path: Path, text: str, **environ: str) -> config.Config:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return config.load_config(path, environ=environ)


def load_error(tmp_path: Path, text: str, **environ: str) -> str:
    with pytest.raises(errors.ConfigError) as caught:
        load(tmp_path, text, **environ)
    return str(caught.value)


def test_the_defaults_open_after_five_unavailable_answers_for_a_minute(tmp_path: Path) -> None:
    common = load(tmp_path, PROVIDER).providers["shop"].common

    assert (common.breaker_threshold, common.breaker_cooldown) == (5, 60.0)
    assert driver_api.CommonSettings(driver="x").breaker_cooldown == 60.0


def test_the_cool_down_is_a_duration_and_shown_as_one(tmp_path: Path) -> None:
    cfg = load(tmp_path, PROVIDER + 'breaker_threshold = 3\nbreaker_cooldown = "5m"\n')

    common = cfg.providers["shop"].common
    assert (common.breaker_threshold, common.breaker_cooldown) == (3, 300.0)
    masked = cfg.masked()["providers"]["shop"]
    assert (masked["breaker_threshold"], masked["breaker_cooldown"]) == (3, "5m")


def test_both_keys_can_come_from_the_environment(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        PROVIDER,
        RECONCILER_PROVIDERS__SHOP__BREAKER_THRESHOLD="12",
        RECONCILER_PROVIDERS__SHOP__BREAKER_COOLDOWN="90s",
    )

    common = cfg.providers["shop"].common
    assert (common.breaker_threshold, common.breaker_cooldown) == (12, 90.0)


@pytest.mark.parametrize(
    ("text", "located", "problem"),
    [
        pytest.param("breaker_threshold = 0\n", "breaker_threshold", "greater than or equal to 1", id="k-0"),
        pytest.param(
            "breaker_threshold = 1001\n", "breaker_threshold", "less than or equal to 1000", id="k-big"
        ),
        pytest.param(
            "breaker_threshold = 2.5\n", "breaker_threshold", "expected a whole number", id="k-float"
        ),
        pytest.param('breaker_cooldown = "0s"\n', "breaker_cooldown", "greater than 0", id="zero-cooldown"),
        pytest.param('breaker_cooldown = "61m"\n', "breaker_cooldown", "at most 1h", id="long-cooldown"),
        pytest.param("breaker_cooldown = 60\n", "breaker_cooldown", "invalid duration 60", id="a-number"),
    ],
)
def test_values_out_of_bounds_are_one_located_line(
    tmp_path: Path, text: str, located: str, problem: str
) -> None:
    message = load_error(tmp_path, PROVIDER + text)

    assert len(message.splitlines()) == 1, message
    assert f"providers.shop.{located}: " in message and problem in message, message


def test_the_bounds_themselves_are_accepted(tmp_path: Path) -> None:
    low = load(tmp_path, PROVIDER + 'breaker_threshold = 1\nbreaker_cooldown = "1s"\n')
    high = load(tmp_path, PROVIDER + 'breaker_threshold = 1000\nbreaker_cooldown = "1h"\n')

    assert (
        low.providers["shop"].common.breaker_threshold,
        low.providers["shop"].common.breaker_cooldown,
    ) == (1, 1.0)
    assert high.providers["shop"].common.breaker_cooldown == 3600.0


def test_the_example_configuration_shows_both_keys_at_their_defaults() -> None:
    example = tomllib.loads((REPO_ROOT / "config.example.toml").read_text(encoding="utf-8"))
    defaults = driver_api.CommonSettings(driver="x")

    section = example["providers"]["btcpay_main"]  # the section that lists every core-owned key
    assert section["breaker_threshold"] == defaults.breaker_threshold
    assert section["breaker_cooldown"] == "60s" and defaults.breaker_cooldown == 60.0
