"""A webhook service with both shipped drivers, each against its fake (BTCPay `btcpay_main`, Zaprite `zap`), over
one store: what the Zaprite end-to-end tests and the listener fuzz share."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from reconciler_btcpay import BTCPayDriver
from reconciler_zaprite import ZapriteDriver, ZapriteSettings

from reconciler import driver_api
from reconciler.config import WebhookSettings
from reconciler.driver_api import Driver
from reconciler.runner import Provider, RunnerSettings
from reconciler.store import base
from reconciler.timeutil import format_ts, utcnow
from reconciler.webhooks import WebhookService
from tests.fakes import btcpay, zaprite
from tests.store.backends import Raw
from tests.support.shop import new_id
from tests.webhooks.support import SECRET, TOKEN

BTCPAY = "btcpay_main"
ZAPRITE = "zap"


def service(
    store: base.Store,
    session: aiohttp.ClientSession,
    btcpay_fake: btcpay.FakeBTCPay,
    zaprite_fake: zaprite.FakeZaprite,
    signing_key: Ed25519PrivateKey,
    **settings: Any,
) -> WebhookService:
    """A (not yet started) service listening on a free loopback port."""
    btcpay_common = driver_api.CommonSettings(driver="btcpay", timeout=5.0)
    btcpay_settings = BTCPayDriver.Settings.model_validate(
        {
            "base_url": btcpay_fake.base_url,
            "store_id": btcpay.STORE_ID,
            "api_key": btcpay.API_KEY,
            "webhook_secret": SECRET,
        }
    )
    zaprite_common = driver_api.CommonSettings(driver="zaprite", timeout=5.0)
    zaprite_settings = ZapriteSettings.model_validate(
        {"base_url": zaprite_fake.url, "api_key": zaprite_fake.api_key, "webhook_token": TOKEN}
    )
    providers = {
        BTCPAY: Provider(
            BTCPAY,
            cast(Driver, BTCPayDriver(BTCPAY, btcpay_settings, btcpay_common, session)),
            btcpay_common,
        ),
        ZAPRITE: Provider(
            ZAPRITE,
            cast(Driver, ZapriteDriver(ZAPRITE, zaprite_settings, zaprite_common, session)),
            zaprite_common,
        ),
    }
    return WebhookService(
        WebhookSettings.model_validate({"listen": "127.0.0.1:0"} | settings),
        store,
        providers,
        RunnerSettings(),
        signing_key=signing_key,
    )


async def seed_invoice(
    raw: Raw, provider_id: str, ref: str, *, status: str = "pending", amount_sats: int = 50_000
) -> str:
    """An invoice of `provider_id` stored under `ref`, due only in an hour (a pass would not take it now)."""
    product = new_id()
    await raw.execute(
        "INSERT INTO products (id, slug, name, created_at) VALUES (:id, :slug, 'P', :t)",
        {"id": product, "slug": f"p-{product[:8]}", "t": format_ts(utcnow())},
    )
    iid = new_id()
    created = format_ts(utcnow() - timedelta(minutes=5))
    await raw.execute(
        "INSERT INTO invoices (id, payment_provider_id, provider_invoice_id, product_id, status, amount_sats,"
        " created_at, updated_at, next_check_at)"
        " VALUES (:id, :p, :ref, :product, :status, :amount, :c, :c, :later)",
        {
            "id": iid,
            "p": provider_id,
            "ref": ref,
            "product": product,
            "status": status,
            "amount": amount_sats,
            "c": created,
            "later": format_ts(utcnow() + timedelta(hours=1)),
        },
    )
    return iid
