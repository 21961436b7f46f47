"""Configuration loading and validation (SPEC §11, the lease rule of §9)."""

from __future__ import annotations

import json
from datetime import timedelta
from importlib import metadata
from pathlib import Path

import pytest
from pydantic import SecretStr

from reconciler import config, driver_api, errors

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-Value-42"

PROVIDER = """
[providers.shop]
driver = "fake"
base_url = "https://pay.example.com"
"""


class FakeSettings(driver_api.DriverSettings):
    base_url: str
    api_key: SecretStr


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, **environ: str) -> config.Config:
    return config.load_config(write(tmp_path, text), environ=environ)


def load_error(tmp_path: Path, text: str, **environ: str) -> str:
    with pytest.raises(errors.ConfigError) as caught:
        load(tmp_path, text, **environ)
    return str(caught.value)


def test_defaults_follow_the_spec() -> None:
    cfg = config.load_config(None, environ={})

    assert cfg.default_provider is None
    assert cfg.database.url == "sqlite:///var/lib/reconciler/shop.db"
    assert cfg.reconcile == config.ReconcileSettings(
        interval=timedelta(seconds=60),
        initial_delay=timedelta(seconds=15),
        max_age=timedelta(hours=72),
        batch_size=500,
        paid_late="flag",
        schedule=(timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=15), timedelta(hours=1)),
        lease=timedelta(minutes=5),
    )
    assert cfg.post_settle.max_attempts == 8
    assert cfg.post_settle.backoff == (
        timedelta(minutes=1),
        timedelta(minutes=5),
        timedelta(minutes=15),
        timedelta(hours=1),
    )
    assert cfg.daemon.shutdown_grace == timedelta(seconds=30)
    assert (cfg.log.format, cfg.log.level) == ("auto", "INFO")
    assert cfg.license.signing_key_file == Path("/etc/reconciler/signing-key.pem")
    assert cfg.providers == {}
    assert cfg.http is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("72h", timedelta(hours=72)),
        ("2d", timedelta(days=2)),
    ],
)
def test_durations_in_every_unit(tmp_path: Path, text: str, expected: timedelta) -> None:
    cfg = load(tmp_path, f'[reconcile]\nmax_age = "{text}"\n')

    assert cfg.reconcile.max_age == expected


@pytest.mark.parametrize("value", ["60", '"60"', '"1.5h"', '"1w"', '"-5s"', '"5 m"', "[1]"])
def test_a_bad_duration_names_the_key_and_the_accepted_form(tmp_path: Path, value: str) -> None:
    message = load_error(tmp_path, f"[reconcile]\ninterval = {value}\n")

    assert "reconcile.interval" in message
    assert "90s" in message and "15m" in message


def test_a_zero_interval_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[reconcile]\ninterval = "0s"\n')

    assert "reconcile.interval: must be longer than 0s" in message


def test_schedule_needs_exactly_four_steps(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[reconcile]\nschedule = ["1m", "5m", "15m"]\n')

    assert "reconcile.schedule: needs exactly 4 steps" in message
    assert "got 3" in message


def test_a_bad_schedule_step_is_located(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[reconcile]\nschedule = ["1m", "5m", "15", "1h"]\n')

    assert "reconcile.schedule.2: invalid duration '15'" in message


@pytest.mark.parametrize(
    ("text", "located"),
    [
        ('colour = "blue"\n', "colour: unknown key"),
        ('[reconcile]\nintervall = "60s"\n', "reconcile.intervall: unknown key (did you mean 'interval'?"),
        ('[daemon]\nshutdown_grace = "30s"\ngrace = "1s"\n', "daemon.grace: unknown key"),
        ('[http]\nlisten = "127.0.0.1:9464"\nport = 1\n', "http.port: unknown key"),
        ('[databse]\nurl = "sqlite:///x.db"\n', "databse: unknown key (did you mean 'database'?"),
    ],
)
def test_unknown_keys_are_errors(tmp_path: Path, text: str, located: str) -> None:
    message = load_error(tmp_path, text)

    assert located in message
    assert message.startswith(str(tmp_path / "config.toml"))


def test_a_provider_key_typo_is_caught_by_the_driver_settings(tmp_path: Path) -> None:
    cfg = load(tmp_path, PROVIDER + 'api_key = "k"\ntimout = "5s"\n')

    with pytest.raises(errors.ConfigError) as caught:
        config.validate_driver_settings(cfg.providers["shop"], FakeSettings)

    assert "providers.shop.timout: unknown key (did you mean 'timeout'?" in str(caught.value)


def test_driver_settings_validate_the_options(tmp_path: Path) -> None:
    cfg = load(tmp_path, PROVIDER + f'api_key = "{SECRET}"\n')

    settings = config.validate_driver_settings(cfg.providers["shop"], FakeSettings)

    assert isinstance(settings, FakeSettings)
    assert settings.api_key.get_secret_value() == SECRET
    assert settings.base_url == "https://pay.example.com"


def test_a_missing_driver_secret_names_both_ways_to_give_it(tmp_path: Path) -> None:
    cfg = load(tmp_path, PROVIDER)

    with pytest.raises(errors.ConfigError) as caught:
        config.validate_driver_settings(cfg.providers["shop"], FakeSettings)

    assert "providers.shop.api_key: required: set api_key or api_key_file" in str(caught.value)


def test_provider_common_keys_are_converted(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        PROVIDER + 'timeout = "20s"\nretry_max_delay = "1m"\nretry_attempts = 2\nmax_concurrency = 4\n'
        "rate_limit = 2.5\n",
    )

    provider = cfg.providers["shop"]
    assert provider.id == "shop"
    assert provider.common == driver_api.CommonSettings(
        driver="fake", timeout=20.0, retry_max_delay=60.0, retry_attempts=2, max_concurrency=4, rate_limit=2.5
    )
    assert provider.options == {"base_url": "https://pay.example.com"}


def test_provider_durations_must_be_strings(tmp_path: Path) -> None:
    message = load_error(tmp_path, PROVIDER + "timeout = 10\n")

    assert "providers.shop.timeout: invalid duration 10" in message


def test_provider_without_driver(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[providers.shop]\nbase_url = "https://x"\n')

    assert "providers.shop.driver: required but not set" in message


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    text = (
        'default_provider = "shop"\n[reconcile]\nbatch_size = 50\n'
        + PROVIDER
        + '[providers.other]\ndriver = "fake"\n'
    )

    cfg = load(
        tmp_path,
        text,
        RECONCILER_RECONCILE__BATCH_SIZE="100",
        RECONCILER_PROVIDERS__SHOP__BASE_URL="https://env.example.com",
        RECONCILER_PROVIDERS__SHOP__API_KEY=SECRET,
        RECONCILER_DEFAULT_PROVIDER="other",
        RECONCILER_LOG__LEVEL="debug",
        RECONCILER_RECONCILE__SCHEDULE='["2m", "10m", "30m", "2h"]',
    )

    assert cfg.reconcile.batch_size == 100
    assert cfg.providers["shop"].options["base_url"] == "https://env.example.com"
    assert cfg.providers["shop"].options["api_key"] == SecretStr(SECRET)
    assert cfg.default_provider == "other"
    assert cfg.log.level == "DEBUG"
    assert cfg.reconcile.schedule[3] == timedelta(hours=2)


def test_environment_alone_can_define_a_provider() -> None:
    cfg = config.load_config(
        None,
        environ={"RECONCILER_PROVIDERS__ENVPAY__DRIVER": "fake", "RECONCILER_DEFAULT_PROVIDER": "envpay"},
    )

    assert cfg.providers["envpay"].common.driver == "fake"


def test_unrelated_reconciler_variables_are_ignored() -> None:
    cfg = config.load_config(None, environ={"RECONCILER_FIXTURES": "/tmp/x", "RECONCILER_TEST_PG_URL": "x"})

    assert cfg == config.Config()


def test_an_environment_error_names_the_variable(tmp_path: Path) -> None:
    message = load_error(tmp_path, "", RECONCILER_RECONCILE__BATCH_SIZE="0")

    assert message.startswith("$RECONCILER_RECONCILE__BATCH_SIZE: reconcile.batch_size:")


def test_an_unknown_nested_environment_key_is_an_error(tmp_path: Path) -> None:
    message = load_error(tmp_path, "", RECONCILER_RECONCILE__INTERVALL="60s")

    assert "$RECONCILER_RECONCILE__INTERVALL: reconcile.intervall: unknown key" in message


def test_secret_file_by_absolute_path(tmp_path: Path) -> None:
    secret_file = write(tmp_path, SECRET + "\n", name="key")

    cfg = load(tmp_path, PROVIDER + f'api_key_file = "{secret_file}"\n')

    assert cfg.providers["shop"].options["api_key"] == SecretStr(SECRET)
    assert "api_key_file" not in cfg.providers["shop"].options


def test_secret_file_by_credential_name(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    write(credentials, SECRET, name="shop_key")

    cfg = load(tmp_path, PROVIDER + 'api_key_file = "shop_key"\n', CREDENTIALS_DIRECTORY=str(credentials))

    assert cfg.providers["shop"].options["api_key"] == SecretStr(SECRET)


def test_a_credential_name_needs_credentials_directory(tmp_path: Path) -> None:
    message = load_error(tmp_path, PROVIDER + 'api_key_file = "shop_key"\n')

    assert "providers.shop.api_key_file:" in message
    assert "$CREDENTIALS_DIRECTORY is not set" in message


def test_a_missing_secret_file_names_key_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"

    message = load_error(tmp_path, PROVIDER + f'api_key_file = "{missing}"\n')

    assert f"providers.shop.api_key_file: {missing}: no such file" in message


def test_an_empty_secret_file_is_refused(tmp_path: Path) -> None:
    secret_file = write(tmp_path, "\n", name="key")

    message = load_error(tmp_path, PROVIDER + f'api_key_file = "{secret_file}"\n')

    assert f"providers.shop.api_key_file: {secret_file}: empty file" in message


def test_a_secret_given_both_ways_is_refused(tmp_path: Path) -> None:
    secret_file = write(tmp_path, SECRET, name="key")

    message = load_error(tmp_path, PROVIDER + f'api_key = "{SECRET}"\napi_key_file = "{secret_file}"\n')

    assert "providers.shop.api_key_file: both api_key and api_key_file are set" in message
    assert SECRET not in message


def test_an_environment_secret_replaces_the_file_one(tmp_path: Path) -> None:
    cfg = load(
        tmp_path, PROVIDER + 'api_key_file = "/nonexistent/key"\n', RECONCILER_PROVIDERS__SHOP__API_KEY=SECRET
    )

    assert cfg.providers["shop"].options["api_key"] == SecretStr(SECRET)


def test_unresolved_secret_files_are_not_opened(tmp_path: Path) -> None:
    path = write(tmp_path, PROVIDER + 'api_key_file = "/nonexistent/key"\ntoken_file = "no_dir_needed"\n')

    cfg = config.load_config(path, environ={}, resolve_files=False)

    assert cfg.providers["shop"].options == {
        "base_url": "https://pay.example.com",
        "api_key": SecretStr(config.UNRESOLVED_SECRET),
        "token": SecretStr(config.UNRESOLVED_SECRET),
    }


@pytest.mark.parametrize("key", ["api_key", "password", "webhook_secret", "refresh_token"])
def test_inline_secrets_are_secret_strings(tmp_path: Path, key: str) -> None:
    cfg = load(tmp_path, PROVIDER + f'{key} = "{SECRET}"\n')

    assert cfg.providers["shop"].options[key] == SecretStr(SECRET)
    assert SECRET not in repr(cfg)


def test_secrets_never_reach_errors_or_the_masked_view(tmp_path: Path) -> None:
    secret_file = write(tmp_path, SECRET, name="key")
    text = PROVIDER + f'api_key_file = "{secret_file}"\nwebhook_secret = "{SECRET}"\n'
    text += f'[database]\nurl = "postgresql://shop:{SECRET}@db.example.com:5432/shop"\n'

    cfg = load(tmp_path, text)
    masked = json.dumps(cfg.masked())

    assert SECRET not in masked
    assert cfg.masked()["providers"]["shop"]["api_key"] == config.MASK
    assert cfg.masked()["database"]["url"] == f"postgresql://shop:{config.MASK}@db.example.com:5432/shop"

    class Strict(driver_api.DriverSettings):
        api_key: int

    with pytest.raises(errors.ConfigError) as caught:
        config.validate_driver_settings(cfg.providers["shop"], Strict)
    assert SECRET not in str(caught.value)

    message = load_error(tmp_path, f'[database]\nurl = "mysql://shop:{SECRET}@db/shop"\n')
    assert "database.url: unsupported scheme 'mysql'" in message
    assert SECRET not in message


def test_masked_shows_durations_as_written(tmp_path: Path) -> None:
    cfg = load(tmp_path, PROVIDER + 'timeout = "15s"\n[http]\nlisten = "127.0.0.1:9464"\n')

    masked = cfg.masked()

    assert masked["reconcile"]["interval"] == "1m"
    assert masked["reconcile"]["schedule"] == ["1m", "5m", "15m", "1h"]
    assert masked["providers"]["shop"] == {
        "driver": "fake",
        "timeout": "15s",
        "max_concurrency": 16,
        "rate_limit": 0.0,
        "retry_attempts": 3,
        "retry_max_delay": "10s",
        "max_response_bytes": 4194304,
        "base_url": "https://pay.example.com",
    }
    assert masked["http"] == {"listen": "127.0.0.1:9464"}
    assert "default_provider" not in masked


def test_default_provider_must_be_configured(tmp_path: Path) -> None:
    message = load_error(tmp_path, 'default_provider = "btcpay"\n' + PROVIDER)

    assert "default_provider: names provider 'btcpay'" in message
    assert "configured: shop" in message


@pytest.mark.parametrize("provider_id", ["BTCPay", "btc__pay", "1pay", "pay-main"])
def test_bad_provider_ids_are_refused(tmp_path: Path, provider_id: str) -> None:
    message = load_error(tmp_path, f'[providers."{provider_id}"]\ndriver = "fake"\n')

    assert f"providers.{provider_id}: invalid provider id {provider_id!r}" in message


def test_a_lease_shorter_than_twice_the_worst_fetch_is_refused(tmp_path: Path) -> None:
    # worst fetch = 30s × 3 + 20s × 2 = 130s; twice that is 260s, above a 4m lease.
    text = '[reconcile]\nlease = "4m"\n' + PROVIDER + 'timeout = "30s"\nretry_max_delay = "20s"\n'

    message = load_error(tmp_path, text)

    assert "reconcile.lease: lease 4m is shorter than 2 × the worst fetch of provider 'shop'" in message
    assert "at least 260s" in message


def test_a_lease_of_exactly_twice_the_worst_fetch_is_accepted(tmp_path: Path) -> None:
    text = '[reconcile]\nlease = "260s"\n' + PROVIDER + 'timeout = "30s"\nretry_max_delay = "20s"\n'

    cfg = load(tmp_path, text)

    assert cfg.lease_problems() == []


def test_lease_problems_name_each_slow_provider() -> None:
    slow = driver_api.CommonSettings(driver="fake", timeout=120.0)
    cfg = config.Config(
        providers={
            "slow": config.ProviderConfig(id="slow", common=slow),
            "fast": config.ProviderConfig(id="fast", common=driver_api.CommonSettings(driver="fake")),
        }
    )

    problems = cfg.lease_problems()

    assert len(problems) == 1
    assert "'slow'" in problems[0]


@pytest.mark.parametrize(
    ("url", "backend", "path"),
    [
        ("sqlite:///var/lib/reconciler/shop.db", "sqlite", Path("/var/lib/reconciler/shop.db")),
        ("sqlite://shop.db", "sqlite", Path("shop.db")),
        ("sqlite://./data/shop.db", "sqlite", Path("data/shop.db")),
        ("postgresql://shop@db.example.com/shop", "postgresql", None),
        ("postgres://shop:pw@localhost:5432/shop", "postgresql", None),
    ],
)
def test_database_url_forms(url: str, backend: str, path: Path | None) -> None:
    database = config.DatabaseSettings(url=url)

    assert database.backend == backend
    if path is None:
        with pytest.raises(ValueError, match="not a sqlite"):
            _ = database.sqlite_path
    else:
        assert database.sqlite_path == path


@pytest.mark.parametrize(
    "url", ["mysql://shop@db/shop", "/var/lib/shop.db", "sqlite://", "postgresql+asyncpg://x"]
)
def test_bad_database_urls_are_refused(tmp_path: Path, url: str) -> None:
    message = load_error(tmp_path, f'[database]\nurl = "{url}"\n')

    assert "database.url:" in message
    assert "sqlite://" in message or "needs a" in message


def test_a_toml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[reconcile]\ninterval = "60s"\nbatch_size = \n')

    assert message.startswith(f"{tmp_path / 'config.toml'}: TOML syntax error")
    assert "line 3" in message


def test_a_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="config file not found"):
        config.load_config(tmp_path / "absent.toml", environ={})


def test_an_unreadable_config_file(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="cannot read the config file"):
        config.load_config(tmp_path, environ={})


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [("127.0.0.1:9464", "127.0.0.1", 9464), ("[::1]:0", "::1", 0), ("localhost:80", "localhost", 80)],
)
def test_http_listen(listen: str, host: str, port: int) -> None:
    http = config.HttpSettings(listen=listen)

    assert (http.host, http.port) == (host, port)


@pytest.mark.parametrize("listen", ["9464", ":9464", "localhost:http", "127.0.0.1:70000"])
def test_bad_http_listen(tmp_path: Path, listen: str) -> None:
    message = load_error(tmp_path, f'[http]\nlisten = "{listen}"\n')

    assert "http.listen: expected host:port" in message


def test_post_settle_needs_a_backoff_step(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[post_settle]\nbackoff = []\n")

    assert "post_settle.backoff:" in message


def test_the_example_config_validates_without_opening_its_files() -> None:
    cfg = config.load_config(REPO_ROOT / "config.example.toml", environ={}, resolve_files=False)

    assert cfg.default_provider == "btcpay_main"
    assert set(cfg.providers) == {"btcpay_main", "zaprite"}
    assert cfg.providers["btcpay_main"].options["api_key"] == SecretStr(config.UNRESOLVED_SECRET)
    assert cfg.http == config.HttpSettings(listen="127.0.0.1:9464")
    assert cfg.reconcile == config.ReconcileSettings()
    assert cfg.post_settle == config.PostSettleSettings()
    assert cfg.lease_problems() == []


@pytest.mark.parametrize("provider_id", ["btcpay_main", "zaprite"])
def test_the_example_providers_validate_against_their_installed_driver(provider_id: str) -> None:
    provider = config.load_config(
        REPO_ROOT / "config.example.toml", environ={}, resolve_files=False
    ).providers[provider_id]
    found = metadata.entry_points(group="reconciler.drivers", name=provider.common.driver)
    if not found:
        pytest.skip(f"driver {provider.common.driver!r} is not installed")
    driver = next(iter(found)).load()

    config.validate_driver_settings(provider, driver.Settings)
