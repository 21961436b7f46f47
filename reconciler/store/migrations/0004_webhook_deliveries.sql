-- Schema version 4 (docs/schema.md §6): the webhook deliveries (docs/webhooks.md). One new table, nothing else
-- changes.
--   webhook_deliveries  one row per delivery the listener accepted, keyed by (provider_id, idempotency_key):
--                       a redelivery of a recorded delivery finds its row and does nothing more; pruned after
--                       30 days
-- Applied by `reconciler migrate`; stop every instance first: an older release refuses a version-4 database.

-- name: upgrade
-- The statements that take a version-3 database to version 4, run in one transaction.
CREATE TABLE webhook_deliveries (
    provider_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    provider_invoice_id TEXT,
    invoice_id TEXT,
    received_at TEXT NOT NULL CHECK (received_at IS NULL OR (length(received_at) = 27 AND substr(received_at, 11, 1) = 'T' AND substr(received_at, 27, 1) = 'Z')),
    outcome TEXT NOT NULL,
    decision TEXT,
    decided_at TEXT CHECK (decided_at IS NULL OR (length(decided_at) = 27 AND substr(decided_at, 11, 1) = 'T' AND substr(decided_at, 27, 1) = 'Z')),
    PRIMARY KEY (provider_id, idempotency_key)
);
-- pruning walks the old rows
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at);
