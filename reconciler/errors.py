"""The error tree of the reconciler. Every error we raise descends from one root.

::

    ReconcilerError
    ├── ConfigError              bad configuration or usage: exit 2 before any write
    ├── DriverLoadError          a configured driver is missing or broken: exit 2
    ├── SchemaError              the database is not ours / unknown version: exit 2
    │   └── SchemaOutdated       an older version of ours: exit 2 naming `reconciler migrate`
    ├── SigningKeyError          the license signing key is missing or unreadable: exit 2
    ├── LicenseEncodingError     a license cannot be encoded (docs/licenses.md §3): audited, rescheduled
    ├── StoreError               the database failed
    │   └── StoreUnavailable     connection lost, lock timeout: the pass ends, the next tick retries
    │       └── StoreContention  deadlock / serialization failure: the transaction is retried first
    ├── DriverError              raised by drivers, translated from HTTP/JSON at one boundary
    │   ├── ProviderUnavailable  transient (timeout, 5xx, 408, 429): retried, then rescheduled
    │   ├── ProviderAuthError    credentials refused: the provider's circuit opens for the pass
    │   ├── InvoiceNotFound      the provider does not know the invoice: audited once
    │   └── BadProviderResponse  an answer the driver cannot read: audited once
    └── WebhookRefused           a webhook delivery refused at the door (docs/webhooks.md §3): nothing written
        ├── WebhookUnauthorized  bad or missing signature, wrong token: 401
        ├── WebhookNotFound      no webhook ingress at this path: 404
        └── WebhookMalformed     authenticated, but not the JSON the provider sends: 400

A class's docstring is its default message; context travels as attributes. Messages never carry secrets.
"""

from __future__ import annotations


class ReconcilerError(Exception):
    """The reconciler failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (type(self).__doc__ or type(self).__name__).strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(ReconcilerError):
    """The configuration is invalid."""


class DriverLoadError(ReconcilerError):
    """A configured driver could not be loaded."""

    def __init__(
        self,
        message: str | None = None,
        *,
        driver: str | None = None,
        entry_point: str | None = None,
        distribution: str | None = None,
    ) -> None:
        super().__init__(message)
        self.driver = driver
        self.entry_point = entry_point
        self.distribution = distribution


class SchemaError(ReconcilerError):
    """The database does not hold a schema this reconciler knows."""


class SchemaOutdated(SchemaError):
    """The database holds an older version of the schema: run `reconciler migrate`."""

    def __init__(self, message: str | None = None, *, version: int) -> None:
        super().__init__(message)
        self.version = version


class SigningKeyError(ReconcilerError):
    """The license signing key is missing or unreadable."""


class LicenseEncodingError(ReconcilerError):
    """The license cannot be encoded as a LIC1 key."""


class StoreError(ReconcilerError):
    """The database failed."""


class StoreUnavailable(StoreError):
    """The database is unavailable."""


class StoreContention(StoreUnavailable):
    """The database aborted the transaction to resolve contention (deadlock, serialization failure)."""


class DriverError(ReconcilerError):
    """The payment provider's driver failed."""

    def __init__(
        self,
        message: str | None = None,
        *,
        provider_id: str | None = None,
        invoice_id: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.provider_id = provider_id
        self.invoice_id = invoice_id
        self.http_status = http_status


class ProviderUnavailable(DriverError):
    """The payment provider is unavailable."""

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        provider_id: str | None = None,
        invoice_id: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message, provider_id=provider_id, invoice_id=invoice_id, http_status=http_status)
        self.retry_after = retry_after


class ProviderAuthError(DriverError):
    """The payment provider refused our credentials."""


class InvoiceNotFound(DriverError):
    """The payment provider does not know this invoice."""


class BadProviderResponse(DriverError):
    """The payment provider answered with something the driver cannot read."""


class WebhookRefused(ReconcilerError):
    """The webhook delivery was refused."""

    #: the HTTP status the listener answers with
    http_status = 400


class WebhookUnauthorized(WebhookRefused):
    """The webhook delivery is not authenticated (bad or missing signature, or a wrong token)."""

    http_status = 401


class WebhookNotFound(WebhookRefused):
    """No webhook ingress at this path."""

    http_status = 404


class WebhookMalformed(WebhookRefused):
    """The webhook delivery is authenticated but is not the JSON its provider sends."""

    http_status = 400
