-- Named queries of the SQLite store. Blocks start with `-- name: <query>`; parameters are `:name`.
-- The PostgreSQL store defines the same names (a test compares the sets).

-- name: schema_tables
SELECT name FROM sqlite_master WHERE type = 'table';

-- name: schema_version
SELECT version FROM schema_meta;

-- name: claim
UPDATE invoices
SET lease_owner = :owner, lease_token = :token, lease_until = :lease_until
WHERE id IN (
    SELECT i.id FROM invoices AS i
    WHERE i.created_at >= :min_created_at
      AND (i.next_check_at IS NULL OR i.next_check_at <= :pass_start)
      AND (i.lease_until IS NULL OR i.lease_until < :now)
      AND (i.status IN ('pending', 'expired', 'invalid')
           OR (i.status = 'settled' AND i.subscription_id IS NULL
               AND NOT EXISTS (SELECT 1 FROM licenses AS l WHERE l.invoice_id = i.id)))
    ORDER BY (i.next_check_at IS NOT NULL), i.next_check_at, i.created_at, i.id
    LIMIT :batch_size
)
RETURNING id, payment_provider_id, provider_invoice_id, product_id, policy_id, status, amount_sats,
    listed_currency, listed_value, buyer_email, subscription_id, created_at, settled_at, check_attempts,
    last_provider_status, lease_token,
    EXISTS (SELECT 1 FROM licenses AS l WHERE l.invoice_id = invoices.id) AS has_license;

-- name: peek
SELECT i.id, i.payment_provider_id, i.provider_invoice_id, i.product_id, i.policy_id, i.status, i.amount_sats,
    i.listed_currency, i.listed_value, i.buyer_email, i.subscription_id, i.created_at, i.settled_at,
    i.check_attempts, i.last_provider_status, i.lease_token,
    EXISTS (SELECT 1 FROM licenses AS l WHERE l.invoice_id = i.id) AS has_license
FROM invoices AS i
WHERE i.created_at >= :min_created_at
  AND (i.next_check_at IS NULL OR i.next_check_at <= :pass_start)
  AND (i.lease_until IS NULL OR i.lease_until < :now)
  AND (i.status IN ('pending', 'expired', 'invalid')
       OR (i.status = 'settled' AND i.subscription_id IS NULL
           AND NOT EXISTS (SELECT 1 FROM licenses AS l WHERE l.invoice_id = i.id)))
ORDER BY (i.next_check_at IS NOT NULL), i.next_check_at, i.created_at, i.id
LIMIT :batch_size OFFSET :offset;

-- name: get_invoice
SELECT i.id, i.payment_provider_id, i.provider_invoice_id, i.product_id, i.policy_id, i.status, i.amount_sats,
    i.listed_currency, i.listed_value, i.buyer_email, i.subscription_id, i.created_at, i.settled_at,
    i.check_attempts, i.last_provider_status, i.lease_token,
    EXISTS (SELECT 1 FROM licenses AS l WHERE l.invoice_id = i.id) AS has_license
FROM invoices AS i
WHERE i.id = :invoice_id;

-- name: find_invoices
SELECT i.id, i.payment_provider_id, i.provider_invoice_id, i.product_id, i.policy_id, i.status, i.amount_sats,
    i.listed_currency, i.listed_value, i.buyer_email, i.subscription_id, i.created_at, i.settled_at,
    i.check_attempts, i.last_provider_status, i.lease_token,
    EXISTS (SELECT 1 FROM licenses AS l WHERE l.invoice_id = i.id) AS has_license
FROM invoices AS i
WHERE i.provider_invoice_id = :provider_invoice_id
  AND (:provider_id IS NULL OR i.payment_provider_id = :provider_id)
ORDER BY i.created_at, i.id;

-- name: payment_rows
-- Every row of some payments: the provider's own rows and, for the default provider, rows without one.
-- Two branches so that each is a lookup on UNIQUE(payment_provider_id, provider_invoice_id).
SELECT i.id, i.provider_invoice_id, i.status, i.created_at,
    EXISTS (SELECT 1 FROM licenses AS l WHERE l.invoice_id = i.id) AS has_license
FROM invoices AS i
WHERE i.payment_provider_id = :provider_id AND i.provider_invoice_id IN (SELECT value FROM json_each(:provider_invoice_ids))
UNION ALL
SELECT i.id, i.provider_invoice_id, i.status, i.created_at,
    EXISTS (SELECT 1 FROM licenses AS l WHERE l.invoice_id = i.id) AS has_license
FROM invoices AS i
WHERE :include_null = 1 AND i.payment_provider_id IS NULL AND i.provider_invoice_id IN (SELECT value FROM json_each(:provider_invoice_ids));

-- name: lock
-- Held until the settle transaction ends, so two instances settle one payment's rows one after the other.
-- SQLite serialises writers with BEGIN IMMEDIATE already: nothing more to lock.
SELECT :key AS key;

-- name: license_of
SELECT id, status, issued_at, expires_at, policy_id FROM licenses WHERE invoice_id = :invoice_id;

-- name: release
UPDATE invoices
SET lease_owner = NULL, lease_token = NULL, lease_until = NULL,
    next_check_at = COALESCE(:next_check_at, next_check_at)
WHERE id = :invoice_id AND lease_token = :token;

-- name: record_check
UPDATE invoices
SET next_check_at = :next_check_at, check_attempts = check_attempts + 1,
    last_checked_at = COALESCE(:checked_at, last_checked_at),
    last_provider_status = COALESCE(:observation, last_provider_status),
    lease_owner = NULL, lease_token = NULL, lease_until = NULL
WHERE id = :invoice_id AND status = :status AND lease_token = :token;

-- name: quarantine
-- A row held back for a person (unreadable, duplicate): no status, no attempt counted, only the schedule.
UPDATE invoices
SET next_check_at = :next_check_at, last_provider_status = :observation,
    lease_owner = NULL, lease_token = NULL, lease_until = NULL
WHERE id = :invoice_id AND lease_token = :token;

-- name: transition
UPDATE invoices
SET status = :new_status, updated_at = :now, next_check_at = :next_check_at,
    check_attempts = check_attempts + 1, last_checked_at = :now,
    last_provider_status = COALESCE(:observation, last_provider_status),
    lease_owner = NULL, lease_token = NULL, lease_until = NULL
WHERE id = :invoice_id AND status = :status AND lease_token = :token;

-- name: settle
UPDATE invoices
SET status = 'settled', settled_at = COALESCE(settled_at, :now), updated_at = :now,
    next_check_at = :next_check_at, check_attempts = check_attempts + 1,
    last_checked_at = CASE WHEN :observation IS NULL THEN last_checked_at ELSE :now END,
    last_provider_status = COALESCE(:observation, last_provider_status),
    lease_owner = NULL, lease_token = NULL, lease_until = NULL
WHERE id = :invoice_id AND status = :status AND lease_token = :token;

-- name: cancel_redemption
UPDATE discount_redemptions
SET status = 'cancelled', updated_at = :now
WHERE invoice_id = :invoice_id AND status = 'pending'
RETURNING code_id;

-- name: give_back_slot
UPDATE discount_codes
SET used_count = CASE WHEN used_count > 0 THEN used_count - 1 ELSE 0 END
WHERE id = :code_id;

-- name: redeem_redemption
UPDATE discount_redemptions
SET status = 'redeemed', license_id = :license_id, updated_at = :now
WHERE invoice_id = :invoice_id AND status = 'pending'
RETURNING id, code_id;

-- name: redemption_status
SELECT status FROM discount_redemptions WHERE invoice_id = :invoice_id;

-- name: insert_license
INSERT INTO licenses (id, product_id, policy_id, invoice_id, status, license_key, issued_at, expires_at,
    grace_seconds, max_machines, entitlements, is_trial, buyer_email, metadata)
VALUES (:id, :product_id, :policy_id, :invoice_id, 'active', :license_key, :issued_at, :expires_at,
    :grace_seconds, :max_machines, :entitlements, :is_trial, :buyer_email, :metadata)
ON CONFLICT (invoice_id) DO NOTHING
RETURNING id;

-- name: license_for_invoice
SELECT id FROM licenses WHERE invoice_id = :invoice_id;

-- name: insert_subscription
INSERT INTO subscriptions (id, license_id, policy_id, product_id, status, started_at, period_days,
    listed_currency, listed_value, first_invoice_id, payment_provider_id, next_renewal_at, created_at, updated_at)
VALUES (:id, :license_id, :policy_id, :product_id, 'active', :started_at, :period_days,
    :listed_currency, :listed_value, :first_invoice_id, :payment_provider_id, :next_renewal_at, :now, :now)
ON CONFLICT (license_id) DO NOTHING
RETURNING id;

-- name: renew_subscription
UPDATE subscriptions SET status = 'active', updated_at = :now WHERE id = :subscription_id
RETURNING id;

-- name: insert_post_settle_task
INSERT INTO post_settle_tasks (invoice_id, kind, provider_id, status, attempts, next_attempt_at, created_at,
    updated_at)
VALUES (:invoice_id, :kind, :provider_id, 'pending', 0, :now, :now, :now)
ON CONFLICT (invoice_id, kind) DO NOTHING;

-- name: insert_audit
INSERT INTO audit_log (id, occurred_at, actor, action, target_kind, target_id, details)
VALUES (:id, :occurred_at, 'reconciler', :action, :target_kind, :target_id, :details);

-- name: invoice_policy
SELECT id, product_id, slug, duration_seconds, is_trial, is_recurring, trial_days, renewal_period_days,
    grace_seconds, max_machines, entitlements, active, created_at
FROM policies WHERE id = :policy_id;

-- name: product_policies
SELECT id, product_id, slug, duration_seconds, is_trial, is_recurring, trial_days, renewal_period_days,
    grace_seconds, max_machines, entitlements, active, created_at
FROM policies WHERE product_id = :product_id AND active = 1
ORDER BY created_at, id;

-- name: upsert_instance
INSERT INTO reconciler_instances (lease_owner, hostname, pid, started_at, last_pass_started_at,
    last_pass_finished_at, last_summary)
VALUES (:lease_owner, :hostname, :pid, :started_at, :last_pass_started_at, :last_pass_finished_at,
    :last_summary)
ON CONFLICT (lease_owner) DO UPDATE SET
    last_pass_started_at = COALESCE(excluded.last_pass_started_at, reconciler_instances.last_pass_started_at),
    last_pass_finished_at = excluded.last_pass_finished_at,
    last_summary = COALESCE(excluded.last_summary, reconciler_instances.last_summary);

-- name: status_pending
SELECT payment_provider_id, count(*) AS pending, min(created_at) AS oldest_created_at
FROM invoices
WHERE status = 'pending' AND created_at >= :min_created_at
GROUP BY payment_provider_id
ORDER BY payment_provider_id;

-- name: status_stale
SELECT count(*) FROM invoices WHERE status = 'pending' AND created_at < :min_created_at;

-- name: status_instances
SELECT lease_owner, hostname, pid, started_at, last_pass_started_at, last_pass_finished_at, last_summary
FROM reconciler_instances
WHERE :since IS NULL OR COALESCE(last_pass_started_at, started_at) >= :since
ORDER BY last_pass_finished_at DESC, lease_owner;

-- name: status_other_instances
SELECT count(*) FROM reconciler_instances
WHERE NOT (:since IS NULL OR COALESCE(last_pass_started_at, started_at) >= :since);

-- name: status_quarantined
SELECT i.id, i.last_provider_status,
    (SELECT max(a.occurred_at) FROM audit_log AS a
     WHERE a.target_kind = 'invoice' AND a.target_id = i.id
       AND a.action IN ('invoice.unreadable', 'invoice.duplicate')) AS since
FROM invoices AS i
WHERE i.last_provider_status LIKE '!unreadable:%' OR i.last_provider_status LIKE '!duplicate:%'
ORDER BY i.created_at, i.id
LIMIT :limit;

-- name: status_quarantined_count
SELECT count(*) FROM invoices
WHERE last_provider_status LIKE '!unreadable:%' OR last_provider_status LIKE '!duplicate:%';

-- name: status_review
SELECT action, count(*) AS n, max(occurred_at) AS latest
FROM audit_log
WHERE action IN (SELECT value FROM json_each(:actions))
  AND occurred_at >= :since
GROUP BY action
ORDER BY action;

-- name: invoice_audits
SELECT occurred_at, action, target_kind, target_id, details
FROM audit_log
WHERE target_kind = 'invoice' AND target_id = :invoice_id
ORDER BY occurred_at, id;

-- name: due_post_settle_tasks
SELECT t.invoice_id, t.kind, t.provider_id, t.attempts, i.provider_invoice_id,
    s.id AS subscription_id, s.payment_profile_id
FROM post_settle_tasks AS t
JOIN invoices AS i ON i.id = t.invoice_id
LEFT JOIN licenses AS l ON l.invoice_id = t.invoice_id
LEFT JOIN subscriptions AS s ON s.license_id = l.id
WHERE t.status = 'pending' AND (t.next_attempt_at IS NULL OR t.next_attempt_at <= :now)
ORDER BY t.next_attempt_at, t.invoice_id, t.kind
LIMIT :batch_size;

-- name: claim_post_settle_task
UPDATE post_settle_tasks
SET attempts = attempts + 1, next_attempt_at = :lease_until, updated_at = :now
WHERE invoice_id = :invoice_id AND kind = :kind AND attempts = :attempts AND status = 'pending';

-- name: finish_post_settle_task
UPDATE post_settle_tasks
SET status = :status, last_error = :last_error, next_attempt_at = :next_attempt_at, updated_at = :now
WHERE invoice_id = :invoice_id AND kind = :kind AND attempts = :attempts AND status = 'pending';

-- name: store_payment_profile
UPDATE subscriptions
SET provider_contact_id = :contact_id, payment_profile_id = :profile_id, payment_profile_method = :method,
    payment_profile_expires_at = :expires_at, updated_at = :now
WHERE id = :subscription_id AND payment_profile_id IS NULL;

-- name: prune_instances
DELETE FROM reconciler_instances
WHERE COALESCE(last_pass_finished_at, started_at) < :cutoff AND lease_owner <> :lease_owner;

-- name: schema_columns
SELECT m.name AS table_name, c.name AS column_name
FROM sqlite_master AS m, pragma_table_info(m.name) AS c
WHERE m.type = 'table'
ORDER BY m.name, c.cid;

-- name: schema_indexes
-- partial indexes enforce nothing for the rows outside them: they never count
SELECT m.name AS table_name, il.name AS index_name, il."unique" AS is_unique, il.origin AS origin,
       ii.seqno AS position, ii.name AS column_name
FROM sqlite_master AS m, pragma_index_list(m.name) AS il, pragma_index_info(il.name) AS ii
WHERE m.type = 'table' AND il.partial = 0
ORDER BY m.name, il.name, ii.seqno;
