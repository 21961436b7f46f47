"""Zaprite driver for invoice-reconciler (entry point ``reconciler.drivers: zaprite``)."""

from reconciler_zaprite.driver import CAPTURE_PAYMENT_PROFILE, ZapriteDriver, ZapriteSettings

__all__ = ["CAPTURE_PAYMENT_PROFILE", "ZapriteDriver", "ZapriteSettings"]
