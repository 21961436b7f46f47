-- Schema version 2 (docs/schema.md §6): the operator's desk. Three new tables, nothing else changes.
--   review_items       the review worklist: one row per item a person should look at (docs/schema.md §3.11)
--   api_keys           scoped keys of the HTTP API; only the SHA-256 of a token is stored
--   provider_controls  a provider paused by an operator, honoured by every instance
-- Applied by `reconciler migrate`; stop every instance first: an older release refuses a version-2 database.

-- name: upgrade
-- The statements that take a version-1 database to version 2, run in one transaction.
CREATE TABLE review_items (
    id TEXT PRIMARY KEY,
    invoice_id TEXT NOT NULL REFERENCES invoices (id),
    kind TEXT NOT NULL,
    opened_at TEXT NOT NULL CHECK (opened_at IS NULL OR (length(opened_at) = 27 AND substr(opened_at, 11, 1) = 'T' AND substr(opened_at, 27, 1) = 'Z')),
    audit_id TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved', 'dismissed')),
    closed_by TEXT,
    closed_at TEXT CHECK (closed_at IS NULL OR (length(closed_at) = 27 AND substr(closed_at, 11, 1) = 'T' AND substr(closed_at, 27, 1) = 'Z')),
    close_reason TEXT
);
-- one open item per invoice and kind: opening one is INSERT ... ON CONFLICT (invoice_id, kind) WHERE status = 'open'
-- DO NOTHING
CREATE UNIQUE INDEX review_items_open ON review_items (invoice_id, kind) WHERE status = 'open';
CREATE INDEX review_items_status_opened ON review_items (status, opened_at, id);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('read-only', 'license-issuer', 'support', 'full-admin')),
    created_at TEXT NOT NULL CHECK (created_at IS NULL OR (length(created_at) = 27 AND substr(created_at, 11, 1) = 'T' AND substr(created_at, 27, 1) = 'Z')),
    last_used_at TEXT CHECK (last_used_at IS NULL OR (length(last_used_at) = 27 AND substr(last_used_at, 11, 1) = 'T' AND substr(last_used_at, 27, 1) = 'Z')),
    revoked_at TEXT CHECK (revoked_at IS NULL OR (length(revoked_at) = 27 AND substr(revoked_at, 11, 1) = 'T' AND substr(revoked_at, 27, 1) = 'Z'))
);

CREATE TABLE provider_controls (
    provider_id TEXT PRIMARY KEY,
    paused INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    changed_by TEXT,
    changed_at TEXT CHECK (changed_at IS NULL OR (length(changed_at) = 27 AND substr(changed_at, 11, 1) = 'T' AND substr(changed_at, 27, 1) = 'Z')),
    reason TEXT
);
