"""HTTP to the BTCPay Greenfield API through the core's one boundary (``driver_api.JsonClient``).

Bounded reads, strict JSON, the status and transport tables and the scrubbing of the key are the
boundary's; this module only says how BTCPay authenticates (``Authorization: token <key>``).
"""

from __future__ import annotations

import aiohttp

from reconciler import driver_api

SERVICE = "BTCPay"


def make_client(
    *,
    provider_id: str,
    base_url: str,
    api_key: driver_api.SecretStr,
    common: driver_api.CommonSettings,
    session: aiohttp.ClientSession,
) -> driver_api.JsonClient:
    """The boundary for one BTCPay Server: one attempt per call, ``common``'s timeout and body limit."""
    authorization = driver_api.auth_header("token", api_key)
    return driver_api.JsonClient.for_provider(
        provider_id, common, session, service=SERVICE, base_url=base_url, authorization=authorization
    )
