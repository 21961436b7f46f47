"""BTCPay Server driver for invoice-reconciler (entry point ``reconciler.drivers: btcpay``)."""

from reconciler_btcpay.driver import BTCPayDriver

Settings = BTCPayDriver.Settings

__all__ = ["BTCPayDriver", "Settings"]
