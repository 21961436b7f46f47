-- The shared-database contract of invoice-reconciler, schema version 4 (docs/schema.md).
-- It always equals version 1 with every migration (reconciler/store/migrations/) applied in order; a test
-- compares the two on both engines.
-- Portable SQL: applies unchanged on SQLite >= 3.35 and PostgreSQL >= 13.
-- Conventions: ids are canonical lower-case UUID text; amounts are BIGINT minor units (sats, cents);
-- timestamps are 27-character ISO-8601 UTC text (2026-01-02T03:04:05.000000Z), CHECKed so a writer using
-- another form fails loudly; booleans are INTEGER 0/1; JSON is text.
-- The storefront fills only the non-bookkeeping columns; every other column is nullable or defaulted.
CREATE TABLE schema_meta (
    version INTEGER NOT NULL
);

CREATE TABLE products (
    id TEXT PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL CHECK (created_at IS NULL OR (length(created_at) = 27 AND substr(created_at, 11, 1) = 'T' AND substr(created_at, 27, 1) = 'Z'))
);

CREATE TABLE policies (
    id TEXT PRIMARY KEY,
    product_id TEXT NOT NULL REFERENCES products (id),
    slug TEXT NOT NULL,
    duration_seconds BIGINT NOT NULL DEFAULT 0 CHECK (duration_seconds >= 0),
    is_trial INTEGER NOT NULL DEFAULT 0 CHECK (is_trial IN (0, 1)),
    is_recurring INTEGER NOT NULL DEFAULT 0 CHECK (is_recurring IN (0, 1)),
    trial_days INTEGER NOT NULL DEFAULT 0 CHECK (trial_days >= 0),
    renewal_period_days INTEGER NOT NULL DEFAULT 0 CHECK (renewal_period_days >= 0),
    grace_seconds BIGINT NOT NULL DEFAULT 0 CHECK (grace_seconds >= 0),
    max_machines INTEGER NOT NULL DEFAULT 1,
    entitlements TEXT NOT NULL DEFAULT '[]',
    active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    created_at TEXT NOT NULL CHECK (created_at IS NULL OR (length(created_at) = 27 AND substr(created_at, 11, 1) = 'T' AND substr(created_at, 27, 1) = 'Z')),
    UNIQUE (product_id, slug)
);

CREATE TABLE invoices (
    id TEXT PRIMARY KEY,
    payment_provider_id TEXT,
    provider_invoice_id TEXT NOT NULL,
    product_id TEXT NOT NULL REFERENCES products (id),
    policy_id TEXT REFERENCES policies (id),
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'settled', 'expired', 'invalid')),
    amount_sats BIGINT NOT NULL CHECK (amount_sats >= 0),
    listed_currency TEXT,
    listed_value BIGINT,
    buyer_email TEXT,
    -- the subscription a renewal invoice renews; no FOREIGN KEY on purpose (docs/schema.md §3.3: it would be
    -- a loop)
    subscription_id TEXT,
    created_at TEXT NOT NULL CHECK (created_at IS NULL OR (length(created_at) = 27 AND substr(created_at, 11, 1) = 'T' AND substr(created_at, 27, 1) = 'Z')),
    updated_at TEXT CHECK (updated_at IS NULL OR (length(updated_at) = 27 AND substr(updated_at, 11, 1) = 'T' AND substr(updated_at, 27, 1) = 'Z')),
    settled_at TEXT CHECK (settled_at IS NULL OR (length(settled_at) = 27 AND substr(settled_at, 11, 1) = 'T' AND substr(settled_at, 27, 1) = 'Z')),
    -- reconciler bookkeeping
    next_check_at TEXT CHECK (next_check_at IS NULL OR (length(next_check_at) = 27 AND substr(next_check_at, 11, 1) = 'T' AND substr(next_check_at, 27, 1) = 'Z')),
    check_attempts INTEGER NOT NULL DEFAULT 0,
    last_checked_at TEXT CHECK (last_checked_at IS NULL OR (length(last_checked_at) = 27 AND substr(last_checked_at, 11, 1) = 'T' AND substr(last_checked_at, 27, 1) = 'Z')),
    last_provider_status TEXT,
    lease_owner TEXT,
    lease_token TEXT,
    lease_until TEXT CHECK (lease_until IS NULL OR (length(lease_until) = 27 AND substr(lease_until, 11, 1) = 'T' AND substr(lease_until, 27, 1) = 'Z')),
    UNIQUE (payment_provider_id, provider_invoice_id)
);
CREATE INDEX invoices_status_next_check ON invoices (status, next_check_at);
CREATE INDEX invoices_status_created ON invoices (status, created_at);
-- a claim reads its batch in order from these (docs/reconcile.md §1): the open invoices by next check, and the
-- odd ones whose next check is set before their creation (version 3)
CREATE INDEX invoices_due ON invoices (next_check_at, created_at, id)
    WHERE status IN ('pending', 'expired', 'invalid');
CREATE INDEX invoices_due_early ON invoices (created_at, next_check_at)
    WHERE status IN ('pending', 'expired', 'invalid') AND next_check_at < created_at;

CREATE TABLE licenses (
    id TEXT PRIMARY KEY,
    product_id TEXT NOT NULL REFERENCES products (id),
    policy_id TEXT REFERENCES policies (id),
    -- UNIQUE(invoice_id) makes issuance exactly-once across every writer
    invoice_id TEXT UNIQUE REFERENCES invoices (id),
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'revoked')),
    license_key TEXT NOT NULL,
    issued_at TEXT NOT NULL CHECK (issued_at IS NULL OR (length(issued_at) = 27 AND substr(issued_at, 11, 1) = 'T' AND substr(issued_at, 27, 1) = 'Z')),
    expires_at TEXT CHECK (expires_at IS NULL OR (length(expires_at) = 27 AND substr(expires_at, 11, 1) = 'T' AND substr(expires_at, 27, 1) = 'Z')),
    grace_seconds BIGINT NOT NULL DEFAULT 0,
    max_machines INTEGER NOT NULL DEFAULT 1,
    entitlements TEXT NOT NULL DEFAULT '[]',
    is_trial INTEGER NOT NULL DEFAULT 0 CHECK (is_trial IN (0, 1)),
    buyer_email TEXT,
    metadata TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    license_id TEXT NOT NULL UNIQUE REFERENCES licenses (id),
    policy_id TEXT REFERENCES policies (id),
    product_id TEXT NOT NULL REFERENCES products (id),
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'past_due', 'cancelled', 'lapsed')),
    started_at TEXT NOT NULL CHECK (started_at IS NULL OR (length(started_at) = 27 AND substr(started_at, 11, 1) = 'T' AND substr(started_at, 27, 1) = 'Z')),
    period_days INTEGER NOT NULL DEFAULT 0,
    listed_currency TEXT,
    listed_value BIGINT,
    first_invoice_id TEXT,
    payment_provider_id TEXT,
    next_renewal_at TEXT CHECK (next_renewal_at IS NULL OR (length(next_renewal_at) = 27 AND substr(next_renewal_at, 11, 1) = 'T' AND substr(next_renewal_at, 27, 1) = 'Z')),
    provider_contact_id TEXT,
    payment_profile_id TEXT,
    payment_profile_method TEXT,
    payment_profile_expires_at TEXT CHECK (payment_profile_expires_at IS NULL OR (length(payment_profile_expires_at) = 27 AND substr(payment_profile_expires_at, 11, 1) = 'T' AND substr(payment_profile_expires_at, 27, 1) = 'Z')),
    created_at TEXT NOT NULL CHECK (created_at IS NULL OR (length(created_at) = 27 AND substr(created_at, 11, 1) = 'T' AND substr(created_at, 27, 1) = 'Z')),
    updated_at TEXT NOT NULL CHECK (updated_at IS NULL OR (length(updated_at) = 27 AND substr(updated_at, 11, 1) = 'T' AND substr(updated_at, 27, 1) = 'Z'))
);

CREATE TABLE discount_codes (
    id TEXT PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    max_uses INTEGER,
    used_count INTEGER NOT NULL DEFAULT 0 CHECK (used_count >= 0)
);

CREATE TABLE discount_redemptions (
    id TEXT PRIMARY KEY,
    code_id TEXT NOT NULL REFERENCES discount_codes (id),
    invoice_id TEXT NOT NULL UNIQUE REFERENCES invoices (id),
    license_id TEXT REFERENCES licenses (id),
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'redeemed', 'cancelled')),
    created_at TEXT NOT NULL CHECK (created_at IS NULL OR (length(created_at) = 27 AND substr(created_at, 11, 1) = 'T' AND substr(created_at, 27, 1) = 'Z')),
    updated_at TEXT NOT NULL CHECK (updated_at IS NULL OR (length(updated_at) = 27 AND substr(updated_at, 11, 1) = 'T' AND substr(updated_at, 27, 1) = 'Z'))
);

CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    occurred_at TEXT NOT NULL CHECK (occurred_at IS NULL OR (length(occurred_at) = 27 AND substr(occurred_at, 11, 1) = 'T' AND substr(occurred_at, 27, 1) = 'Z')),
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target_id TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_target ON audit_log (target_kind, target_id, action);
CREATE INDEX audit_log_occurred ON audit_log (occurred_at, id);

CREATE TABLE post_settle_tasks (
    invoice_id TEXT NOT NULL REFERENCES invoices (id),
    kind TEXT NOT NULL,
    provider_id TEXT,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT CHECK (next_attempt_at IS NULL OR (length(next_attempt_at) = 27 AND substr(next_attempt_at, 11, 1) = 'T' AND substr(next_attempt_at, 27, 1) = 'Z')),
    last_error TEXT,
    created_at TEXT NOT NULL CHECK (created_at IS NULL OR (length(created_at) = 27 AND substr(created_at, 11, 1) = 'T' AND substr(created_at, 27, 1) = 'Z')),
    updated_at TEXT NOT NULL CHECK (updated_at IS NULL OR (length(updated_at) = 27 AND substr(updated_at, 11, 1) = 'T' AND substr(updated_at, 27, 1) = 'Z')),
    UNIQUE (invoice_id, kind)
);
CREATE INDEX post_settle_tasks_due ON post_settle_tasks (status, next_attempt_at);

CREATE TABLE reconciler_instances (
    lease_owner TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at TEXT NOT NULL CHECK (started_at IS NULL OR (length(started_at) = 27 AND substr(started_at, 11, 1) = 'T' AND substr(started_at, 27, 1) = 'Z')),
    last_pass_started_at TEXT CHECK (last_pass_started_at IS NULL OR (length(last_pass_started_at) = 27 AND substr(last_pass_started_at, 11, 1) = 'T' AND substr(last_pass_started_at, 27, 1) = 'Z')),
    last_pass_finished_at TEXT CHECK (last_pass_finished_at IS NULL OR (length(last_pass_finished_at) = 27 AND substr(last_pass_finished_at, 11, 1) = 'T' AND substr(last_pass_finished_at, 27, 1) = 'Z')),
    last_summary TEXT
);

-- version 2 (migrations/0002_operator_desk.sql): the operator's desk
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

-- version 4: the webhook deliveries the listener accepted (docs/webhooks.md), pruned after 30 days
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
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at);

INSERT INTO schema_meta (version) VALUES (4);
