-- The store's SQL, one file for SQLite and PostgreSQL (loaded by queries.py).
--
-- `-- name: <query>` starts a query the store runs; `-- part: <part>` starts SQL that queries and other
-- parts include as `{part}`. The line after a header says what the block is for. A block serves both
-- dialects unless it is written once per dialect (`-- name: <query> @sqlite` and `... @postgres`): only
-- where the engines differ. Parameters are `:name` (turned into `$n` for PostgreSQL), timestamps are text
-- (docs/schema.md §1) and time is always a parameter. PostgreSQL cannot infer the type of a parameter only
-- compared with NULL: it carries a CAST, which SQLite reads the same way.

-- part: has_license
-- Whether the invoice row in scope (`invoices`) has its license.
EXISTS (SELECT 1 FROM licenses AS l WHERE l.invoice_id = invoices.id)

-- part: invoice_columns
-- The invoice columns store/rows.py reads (claim, peek, lookups).
id, payment_provider_id, provider_invoice_id, product_id, policy_id, status, amount_sats, listed_currency,
    listed_value, buyer_email, subscription_id, created_at, settled_at, check_attempts,
    last_provider_status, lease_token, {has_license} AS has_license

-- part: not_leased
-- No instance holds the row's lease at :now.
(lease_until IS NULL OR lease_until < :now)

-- part: due_candidates
-- docs/reconcile.md §1's candidates, never-checked first, then oldest due: created within max_age, due, not
-- leased, still open or settled without a license (a renewal invoice has no license of its own), and not
-- of a provider an operator paused (a row without a provider id is :default_provider's).
WHERE created_at >= :min_created_at
  AND (next_check_at IS NULL OR next_check_at <= :pass_start)
  AND {not_leased}
  AND (status IN ('pending', 'expired', 'invalid')
       OR (status = 'settled' AND subscription_id IS NULL AND NOT {has_license}))
  AND NOT {provider_paused}
ORDER BY (next_check_at IS NOT NULL), next_check_at, created_at, id

-- part: provider_paused
-- Whether the provider of the invoice row in scope (`invoices`) is paused (provider_controls).
EXISTS (SELECT 1 FROM provider_controls AS pc
        WHERE pc.paused = 1
          AND pc.provider_id = COALESCE(invoices.payment_provider_id, CAST(:default_provider AS TEXT)))

-- part: skip_locked @sqlite
-- Nothing: a claim runs inside BEGIN IMMEDIATE, the one writer of the file.

-- part: skip_locked @postgres
-- Rows another instance is claiming right now are left to it, not waited for.
FOR UPDATE SKIP LOCKED

-- part: fenced
-- The row as this claim leased it: a writer whose lease was taken over matches nothing.
id = :invoice_id AND lease_token = :token

-- part: lease_cleared
-- The lease given back with the write.
lease_owner = NULL, lease_token = NULL, lease_until = NULL

-- part: row_fenced @sqlite
-- A row of `v` (one element of a `:rows` JSON array) matched to its invoice, fenced by the lease token and
-- compare-and-set on the status its claim read.
invoices.id = json_extract(v.value, '$.invoice_id')
  AND invoices.lease_token = json_extract(v.value, '$.token')
  AND invoices.status = json_extract(v.value, '$.status')

-- part: row_fenced @postgres
-- A row of `v` (json_to_recordset over `:rows`) matched to its invoice `i`, fenced by the lease token and
-- compare-and-set on the status its claim read.
i.id = v.invoice_id AND i.lease_token = v.token AND i.status = v.status

-- part: json_elements @sqlite
-- The set-returning function over a JSON array parameter (column `value`).
json_each

-- part: json_elements @postgres
-- The set-returning function over a JSON array parameter (column `value`).
json_array_elements_text

-- part: payment_columns
-- What choosing the row of a payment to settle needs (decide.payment_winner).
id, provider_invoice_id, status, created_at, {has_license} AS has_license

-- part: policy_columns
-- The policy columns store/rows.py reads.
id, product_id, slug, duration_seconds, is_trial, is_recurring, trial_days, renewal_period_days,
    grace_seconds, max_machines, entitlements, active, created_at

-- part: post_settle_task
-- One post-settle task at the attempt this instance counted on, still pending.
invoice_id = :invoice_id AND kind = :kind AND attempts = :attempts AND status = 'pending'

-- part: instance_listed
-- Instances whose last pass (or start) is at or after :since; every instance when :since is NULL.
CAST(:since AS TEXT) IS NULL OR COALESCE(last_pass_started_at, started_at) >= :since

-- part: quarantined
-- Invoices held back for a person (unreadable, duplicate): their observation starts with `!`.
last_provider_status LIKE '!unreadable:%' OR last_provider_status LIKE '!duplicate:%'

-- name: schema_tables @sqlite
-- The names of the database's tables.
SELECT name FROM sqlite_master WHERE type = 'table';

-- name: schema_tables @postgres
-- The names of the tables of the schema we work in.
SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema();

-- name: schema_version
-- The schema_meta rows: exactly one, our SCHEMA_VERSION, in a database that is ours.
SELECT version FROM schema_meta;

-- name: schema_columns @sqlite
-- Every (table, column) of the database, for the schema check.
SELECT m.name AS table_name, c.name AS column_name
FROM sqlite_master AS m, pragma_table_info(m.name) AS c
WHERE m.type = 'table'
ORDER BY m.name, c.cid;

-- name: schema_columns @postgres
-- Every (table, column) of the schema, for the schema check.
SELECT table_name::text AS table_name, column_name::text AS column_name
FROM information_schema.columns
WHERE table_schema = current_schema()
ORDER BY table_name, ordinal_position;

-- name: schema_indexes @sqlite
-- Every index and unique constraint with its columns in order, for the schema check.
-- partial indexes are marked: they enforce nothing for the rows outside them, so one never stands in for a
-- whole index (nor the other way round)
SELECT m.name AS table_name, il.name AS index_name, il."unique" AS is_unique, il.origin AS origin,
       il.partial AS is_partial, ii.seqno AS position, ii.name AS column_name
FROM sqlite_master AS m, pragma_index_list(m.name) AS il, pragma_index_info(il.name) AS ii
WHERE m.type = 'table'
ORDER BY m.name, il.name, ii.seqno;

-- name: schema_indexes @postgres
-- Every index and unique constraint with its columns in order, for the schema check.
-- key columns only (not INCLUDE ones); invalid indexes enforce nothing, partial ones are marked (as SQLite's)
SELECT t.relname::text AS table_name, i.relname::text AS index_name, x.indisunique AS is_unique,
       CASE WHEN x.indisprimary THEN 'pk' WHEN x.indisunique THEN 'u' ELSE 'c' END AS origin,
       x.indpred IS NOT NULL AS is_partial, k.position AS position, a.attname::text AS column_name
FROM pg_catalog.pg_index AS x
JOIN pg_catalog.pg_class AS t ON t.oid = x.indrelid
JOIN pg_catalog.pg_class AS i ON i.oid = x.indexrelid
CROSS JOIN LATERAL unnest(x.indkey::int2[]) WITH ORDINALITY AS k (attnum, position)
LEFT JOIN pg_catalog.pg_attribute AS a ON a.attrelid = t.oid AND a.attnum = k.attnum AND k.attnum > 0
WHERE t.relnamespace = current_schema()::regnamespace
  AND x.indisvalid AND k.position <= x.indnkeyatts
ORDER BY 1, 2, 6;

-- name: set_schema_version
-- A migration's last statement: the version it reached, compare-and-set on the one it started from.
UPDATE schema_meta SET version = :version WHERE version = :previous;

-- name: lock @sqlite
-- Nothing to take: BEGIN IMMEDIATE already made this transaction the file's one writer.
SELECT :key AS key;

-- name: lock @postgres
-- A lock on :key held until the transaction ends (one settle per payment, one schema change at a time).
SELECT pg_advisory_xact_lock(hashtextextended(:key, 0));

-- part: by_due @sqlite
-- SQLite's planner, without statistics, would rather sort the rows of a status than read this index in order.
INDEXED BY invoices_due

-- part: by_due @postgres
-- PostgreSQL's planner finds the index itself.

-- part: by_due_early @sqlite
-- As by_due.
INDEXED BY invoices_due_early

-- part: by_due_early @postgres
-- As by_due.

-- part: skip_locked_invoices @sqlite
-- Nothing, as skip_locked.

-- part: skip_locked_invoices @postgres
-- skip_locked for the invoices of a query that also reads a set-returning function.
FOR UPDATE OF invoices SKIP LOCKED

-- part: open_candidate
-- An open invoice (pending, expired, invalid: the partial indexes' rows) that docs/reconcile.md §1 makes a
-- candidate once due: created within max_age, not leased, not of a paused provider.
status IN ('pending', 'expired', 'invalid')
  AND created_at >= :min_created_at
  AND {not_leased}
  AND NOT {provider_paused}

-- part: claim_order
-- The order of due_candidates, over the columns every branch of a claim selects.
(next_check_at IS NOT NULL), next_check_at, created_at, id

-- name: claim
-- Lease up to :batch_size due candidates to :owner with a new :token until :lease_until, in due_candidates'
-- order, each part read in order from an index so a claim costs its batch, not the whole backlog: the open
-- invoices never checked (invoices_due, NULL next check), checked with a next check before the candidate
-- window (invoices_due_early: only odd rows have one), checked and due within the window (invoices_due,
-- a range), and the settled ones without a license the pass found when it began (:recovery, a JSON array
-- of ids, re-checked here).
WITH never AS (
    SELECT id, next_check_at, created_at FROM invoices
    WHERE next_check_at IS NULL AND {open_candidate}
    ORDER BY next_check_at, created_at, id LIMIT :batch_size {skip_locked}
), early AS (
    SELECT id, next_check_at, created_at FROM invoices {by_due_early}
    WHERE next_check_at < created_at AND next_check_at < :min_created_at AND {open_candidate}
    ORDER BY next_check_at, created_at, id LIMIT :batch_size {skip_locked}
), due AS (
    SELECT id, next_check_at, created_at FROM invoices {by_due}
    WHERE next_check_at >= :min_created_at AND next_check_at <= :pass_start AND {open_candidate}
    ORDER BY next_check_at, created_at, id LIMIT :batch_size {skip_locked}
), recovering AS (
    SELECT invoices.id, invoices.next_check_at, invoices.created_at
    FROM {json_elements}(:recovery) AS wanted CROSS JOIN invoices
    WHERE invoices.id = wanted.value AND {recovery_candidate}
    {skip_locked_invoices}
)
UPDATE invoices
SET lease_owner = :owner, lease_token = :token, lease_until = :lease_until
WHERE id IN (
    SELECT id FROM (
        SELECT * FROM never UNION ALL SELECT * FROM early UNION ALL SELECT * FROM due
        UNION ALL SELECT * FROM recovering
    ) AS candidates
    ORDER BY {claim_order} LIMIT :batch_size
)
RETURNING {invoice_columns};

-- part: recovery_candidate
-- A settled invoice without a license that docs/reconcile.md §1 makes a candidate: due, created within
-- max_age, not leased, not a renewal, not of a paused provider.
status = 'settled' AND subscription_id IS NULL AND NOT {has_license}
  AND created_at >= :min_created_at
  AND (next_check_at IS NULL OR next_check_at <= :pass_start)
  AND {not_leased}
  AND NOT {provider_paused}

-- name: recovery_candidates
-- The ids of up to :batch_size settled invoices without a license, in due_candidates' order: looked for once
-- as a pass begins (they are rare, and finding them walks every settled invoice of the window).
SELECT id FROM invoices WHERE {recovery_candidate}
ORDER BY {claim_order} LIMIT :batch_size;

-- name: peek
-- The candidates a claim would lease, a page at a time, leasing nothing (dry run).
SELECT {invoice_columns} FROM invoices {due_candidates}
LIMIT :batch_size OFFSET :offset;

-- name: get_invoice
-- One invoice by its id.
SELECT {invoice_columns} FROM invoices WHERE id = :invoice_id;

-- name: find_invoices
-- The invoices with a provider invoice id (of one provider id unless :provider_id is NULL), oldest first.
SELECT {invoice_columns} FROM invoices
WHERE provider_invoice_id = :provider_invoice_id
  AND (CAST(:provider_id AS TEXT) IS NULL OR payment_provider_id = :provider_id)
ORDER BY created_at, id;

-- name: payment_rows
-- Every row of some payments: the provider's own rows and, for the default provider, rows without one.
-- Two branches so that each is a lookup on UNIQUE(payment_provider_id, provider_invoice_id).
SELECT {payment_columns} FROM invoices
WHERE payment_provider_id = :provider_id
  AND provider_invoice_id IN (SELECT value FROM {json_elements}(:provider_invoice_ids))
UNION ALL
SELECT {payment_columns} FROM invoices
WHERE CAST(:include_null AS INTEGER) = 1 AND payment_provider_id IS NULL
  AND provider_invoice_id IN (SELECT value FROM {json_elements}(:provider_invoice_ids));

-- name: license_of
-- The license of an invoice, as `explain` shows it.
SELECT id, status, issued_at, expires_at, policy_id FROM licenses WHERE invoice_id = :invoice_id;

-- name: release
-- Give the lease back, changing nothing else (but next_check_at when given).
UPDATE invoices
SET {lease_cleared}, next_check_at = COALESCE(:next_check_at, next_check_at)
WHERE {fenced};

-- name: record_check
-- No status change: the schedule, one attempt more, the observation (and when it was made).
UPDATE invoices
SET next_check_at = :next_check_at, check_attempts = check_attempts + 1,
    last_checked_at = COALESCE(:checked_at, last_checked_at),
    last_provider_status = COALESCE(:observation, last_provider_status), {lease_cleared}
WHERE {fenced} AND status = :status;

-- name: record_checks @sqlite
-- Several no-change checks at once (`:rows`, a JSON array of {invoice_id, token, status, next_check_at,
-- checked_at, observation}), each fenced like record_check; the rows written.
UPDATE invoices
SET next_check_at = json_extract(v.value, '$.next_check_at'), check_attempts = check_attempts + 1,
    last_checked_at = COALESCE(json_extract(v.value, '$.checked_at'), last_checked_at),
    last_provider_status = COALESCE(json_extract(v.value, '$.observation'), last_provider_status),
    {lease_cleared}
FROM json_each(:rows) AS v
WHERE {row_fenced}
RETURNING invoices.id;

-- name: record_checks @postgres
-- Several no-change checks at once (`:rows`, a JSON array of {invoice_id, token, status, next_check_at,
-- checked_at, observation}), each fenced like record_check; the rows written.
UPDATE invoices AS i
SET next_check_at = v.next_check_at, check_attempts = i.check_attempts + 1,
    last_checked_at = COALESCE(v.checked_at, i.last_checked_at),
    last_provider_status = COALESCE(v.observation, i.last_provider_status), {lease_cleared}
FROM json_to_recordset(CAST(:rows AS json))
    AS v(invoice_id text, token text, status text, next_check_at text, checked_at text, observation text)
WHERE {row_fenced}
RETURNING i.id;

-- name: release_rows @sqlite
-- Several leases given back at once (`:rows`, a JSON array of {invoice_id, token, next_check_at}),
-- changing nothing else (but next_check_at when given); the rows released.
UPDATE invoices
SET {lease_cleared}, next_check_at = COALESCE(json_extract(v.value, '$.next_check_at'), next_check_at)
FROM json_each(:rows) AS v
WHERE invoices.id = json_extract(v.value, '$.invoice_id')
  AND invoices.lease_token = json_extract(v.value, '$.token')
RETURNING invoices.id;

-- name: release_rows @postgres
-- Several leases given back at once (`:rows`, a JSON array of {invoice_id, token, next_check_at}),
-- changing nothing else (but next_check_at when given); the rows released.
UPDATE invoices AS i
SET {lease_cleared}, next_check_at = COALESCE(v.next_check_at, i.next_check_at)
FROM json_to_recordset(CAST(:rows AS json)) AS v(invoice_id text, token text, next_check_at text)
WHERE i.id = v.invoice_id AND i.lease_token = v.token
RETURNING i.id;

-- name: quarantine
-- A row held back for a person (unreadable, duplicate): no status, no attempt counted, only the schedule.
UPDATE invoices
SET next_check_at = :next_check_at, last_provider_status = :observation, {lease_cleared}
WHERE {fenced};

-- name: transition
-- Expire or invalidate (docs/reconcile.md §7), compare-and-set on the status the claim read.
UPDATE invoices
SET status = :new_status, updated_at = :now, next_check_at = :next_check_at,
    check_attempts = check_attempts + 1, last_checked_at = :now,
    last_provider_status = COALESCE(:observation, last_provider_status), {lease_cleared}
WHERE {fenced} AND status = :status;

-- name: settle_rows @sqlite
-- Several settles at once (`:rows`, a JSON array of {invoice_id, token, status, now, next_check_at,
-- observation}), docs/reconcile.md §8: each fenced, compare-and-set on the status the claim read, a recovery
-- (no observation) observing nothing; the rows settled.
UPDATE invoices
SET status = 'settled', settled_at = COALESCE(settled_at, json_extract(v.value, '$.now')),
    updated_at = json_extract(v.value, '$.now'), next_check_at = json_extract(v.value, '$.next_check_at'),
    check_attempts = check_attempts + 1,
    last_checked_at = CASE WHEN json_extract(v.value, '$.observation') IS NULL THEN last_checked_at
                           ELSE json_extract(v.value, '$.now') END,
    last_provider_status = COALESCE(json_extract(v.value, '$.observation'), last_provider_status),
    {lease_cleared}
FROM json_each(:rows) AS v
WHERE {row_fenced}
RETURNING invoices.id;

-- name: settle_rows @postgres
-- Several settles at once (`:rows`, a JSON array of {invoice_id, token, status, now, next_check_at,
-- observation}), docs/reconcile.md §8: each fenced, compare-and-set on the status the claim read, a recovery
-- (no observation) observing nothing; the rows settled.
UPDATE invoices AS i
SET status = 'settled', settled_at = COALESCE(i.settled_at, v.now), updated_at = v.now,
    next_check_at = v.next_check_at, check_attempts = i.check_attempts + 1,
    last_checked_at = CASE WHEN v.observation IS NULL THEN i.last_checked_at ELSE v.now END,
    last_provider_status = COALESCE(v.observation, i.last_provider_status), {lease_cleared}
FROM json_to_recordset(CAST(:rows AS json))
    AS v(invoice_id text, token text, status text, now text, next_check_at text, observation text)
WHERE {row_fenced}
RETURNING i.id;

-- name: lock_payments @sqlite
-- Nothing to take: BEGIN IMMEDIATE already made this transaction the file's one writer.
SELECT CAST(:keys AS TEXT) AS keys;

-- name: lock_payments @postgres
-- The lock of each key of `:keys` (a JSON array), taken in the array's order, held until the transaction
-- ends: every writer takes its keys in one sorted order, so two never wait on each other.
SELECT count(pg_advisory_xact_lock(hashtextextended(k.value, 0)))
FROM (SELECT e.value FROM json_array_elements_text(CAST(:keys AS json)) WITH ORDINALITY AS e(value, n)
      ORDER BY e.n OFFSET 0) AS k;

-- name: cancel_redemption
-- Cancel the invoice's pending discount redemption; the code whose slot goes back.
UPDATE discount_redemptions
SET status = 'cancelled', updated_at = :now
WHERE invoice_id = :invoice_id AND status = 'pending'
RETURNING code_id;

-- name: give_back_slot
-- One use of a discount code given back (never below zero).
UPDATE discount_codes
SET used_count = CASE WHEN used_count > 0 THEN used_count - 1 ELSE 0 END
WHERE id = :code_id;

-- name: redeem_redemptions @sqlite
-- Several invoices' pending discount redemptions redeemed at once (`:rows`, a JSON array of {invoice_id,
-- license_id, now}); the redemptions redeemed.
UPDATE discount_redemptions
SET status = 'redeemed', license_id = json_extract(v.value, '$.license_id'),
    updated_at = json_extract(v.value, '$.now')
FROM json_each(:rows) AS v
WHERE discount_redemptions.invoice_id = json_extract(v.value, '$.invoice_id')
  AND discount_redemptions.status = 'pending'
RETURNING discount_redemptions.invoice_id, discount_redemptions.id, discount_redemptions.code_id;

-- name: redeem_redemptions @postgres
-- Several invoices' pending discount redemptions redeemed at once (`:rows`, a JSON array of {invoice_id,
-- license_id, now}); the redemptions redeemed.
UPDATE discount_redemptions AS d
SET status = 'redeemed', license_id = v.license_id, updated_at = v.now
FROM json_to_recordset(CAST(:rows AS json)) AS v(invoice_id text, license_id text, now text)
WHERE d.invoice_id = v.invoice_id AND d.status = 'pending'
RETURNING d.invoice_id, d.id, d.code_id;

-- name: redemption_status
-- The status of the invoice's discount redemption, if it has one.
SELECT status FROM discount_redemptions WHERE invoice_id = :invoice_id;

-- name: insert_licenses @sqlite
-- Issue licenses (`:rows`, a JSON array of the licenses' columns), each unless its invoice has one
-- (UNIQUE(invoice_id): exactly once across every writer); the invoices whose license was issued. (`WHERE true`: SQLite's parser needs a WHERE
-- between a SELECT and an upsert's ON CONFLICT.)
INSERT INTO licenses (id, product_id, policy_id, invoice_id, status, license_key, issued_at, expires_at,
    grace_seconds, max_machines, entitlements, is_trial, buyer_email, metadata)
SELECT json_extract(v.value, '$.id'), json_extract(v.value, '$.product_id'),
    json_extract(v.value, '$.policy_id'), json_extract(v.value, '$.invoice_id'), 'active',
    json_extract(v.value, '$.license_key'), json_extract(v.value, '$.issued_at'),
    json_extract(v.value, '$.expires_at'), json_extract(v.value, '$.grace_seconds'),
    json_extract(v.value, '$.max_machines'), json_extract(v.value, '$.entitlements'),
    json_extract(v.value, '$.is_trial'), json_extract(v.value, '$.buyer_email'),
    json_extract(v.value, '$.metadata')
FROM json_each(:rows) AS v
WHERE true
ON CONFLICT (invoice_id) DO NOTHING
RETURNING invoice_id;

-- name: insert_licenses @postgres
-- Issue licenses (`:rows`, a JSON array of the licenses' columns), each unless its invoice has one
-- (UNIQUE(invoice_id): exactly once across every writer); the invoices whose license was issued.
INSERT INTO licenses (id, product_id, policy_id, invoice_id, status, license_key, issued_at, expires_at,
    grace_seconds, max_machines, entitlements, is_trial, buyer_email, metadata)
SELECT v.id, v.product_id, v.policy_id, v.invoice_id, 'active', v.license_key, v.issued_at, v.expires_at,
    v.grace_seconds, v.max_machines, v.entitlements, v.is_trial, v.buyer_email, v.metadata
FROM json_to_recordset(CAST(:rows AS json))
    AS v(id text, product_id text, policy_id text, invoice_id text, license_key text, issued_at text,
         expires_at text, grace_seconds bigint, max_machines integer, entitlements text, is_trial integer,
         buyer_email text, metadata text)
ON CONFLICT (invoice_id) DO NOTHING
RETURNING invoice_id;

-- name: licenses_for_invoices
-- The license of each of some invoices (`:invoice_ids`, a JSON array) that has one.
SELECT invoice_id, id FROM licenses WHERE invoice_id IN (SELECT value FROM {json_elements}(:invoice_ids));

-- name: insert_subscription
-- The subscription of a recurring policy, unless the license has one.
INSERT INTO subscriptions (id, license_id, policy_id, product_id, status, started_at, period_days,
    listed_currency, listed_value, first_invoice_id, payment_provider_id, next_renewal_at, created_at, updated_at)
VALUES (:id, :license_id, :policy_id, :product_id, 'active', :started_at, :period_days,
    :listed_currency, :listed_value, :first_invoice_id, :payment_provider_id, :next_renewal_at, :now, :now)
ON CONFLICT (license_id) DO NOTHING
RETURNING id;

-- name: renew_subscription
-- A paid renewal invoice makes its subscription active again.
UPDATE subscriptions SET status = 'active', updated_at = :now WHERE id = :subscription_id
RETURNING id;

-- name: insert_post_settle_task
-- Queue a post-settle task (docs/reconcile.md §15) of the settled invoice, once per kind.
INSERT INTO post_settle_tasks (invoice_id, kind, provider_id, status, attempts, next_attempt_at, created_at,
    updated_at)
VALUES (:invoice_id, :kind, :provider_id, 'pending', 0, :now, :now, :now)
ON CONFLICT (invoice_id, kind) DO NOTHING;

-- name: insert_audit
-- One audit_log row (docs/audit.md §1), written by the reconciler or for an operator's action (:actor).
INSERT INTO audit_log (id, occurred_at, actor, action, target_kind, target_id, details)
VALUES (:id, :occurred_at, :actor, :action, :target_kind, :target_id, :details);

-- name: open_review_item
-- Open a review item for an audit row of a review action (docs/review.md), unless one of its kind is open
-- for the invoice; an audit row about an id that is not an invoice's (an unreadable one) opens none.
INSERT INTO review_items (id, invoice_id, kind, opened_at, audit_id, status)
SELECT :id, :invoice_id, :kind, :opened_at, :audit_id, 'open'
WHERE EXISTS (SELECT 1 FROM invoices WHERE id = :invoice_id)
ON CONFLICT (invoice_id, kind) WHERE status = 'open' DO NOTHING;

-- name: resolve_review_item
-- The reconciler (or the operator whose action cleared it: :by) resolves the invoice's open item of a kind,
-- if there is one: the condition cleared.
UPDATE review_items
SET status = 'resolved', closed_by = :by, closed_at = :now, close_reason = :reason
WHERE invoice_id = :invoice_id AND kind = :kind AND status = 'open';

-- name: invoices_with_open_items
-- Which of some invoices (a JSON array of ids) have an open review item: only theirs can be resolved.
SELECT DISTINCT invoice_id FROM review_items
WHERE status = 'open' AND invoice_id IN (SELECT value FROM {json_elements}(:invoice_ids));

-- name: resolve_task_review_item
-- Like resolve_review_item for a finished post-settle task: only once no task of the invoice is failed.
UPDATE review_items
SET status = 'resolved', closed_by = 'reconciler', closed_at = :now, close_reason = :reason
WHERE invoice_id = :invoice_id AND kind = :kind AND status = 'open'
  AND NOT EXISTS (SELECT 1 FROM post_settle_tasks AS t WHERE t.invoice_id = :invoice_id AND t.status = 'failed');

-- part: review_item_rows
-- A review item with its invoice's provider ids and the details of the audit row that opened it.
SELECT r.id, r.invoice_id, r.kind, r.opened_at, r.audit_id, r.status, r.closed_by, r.closed_at,
    r.close_reason, i.payment_provider_id, i.provider_invoice_id, a.details
FROM review_items AS r
JOIN invoices AS i ON i.id = r.invoice_id
LEFT JOIN audit_log AS a ON a.id = r.audit_id

-- name: open_review_items
-- The open review items, oldest first, a page of :limit after (:after_opened_at, :after_id) when given.
{review_item_rows}
WHERE r.status = 'open'
  AND (CAST(:after_id AS TEXT) IS NULL OR (r.opened_at, r.id) > (:after_opened_at, :after_id))
ORDER BY r.opened_at, r.id
LIMIT :limit;

-- name: review_item
-- One review item by its id, open or closed.
{review_item_rows}
WHERE r.id = :item_id;

-- name: close_review_item
-- Close an item by hand (dismissed) or by the reconciler (resolved): compare-and-set on its being open.
UPDATE review_items
SET status = :status, closed_by = :closed_by, closed_at = :now, close_reason = :reason
WHERE id = :item_id AND status = 'open';

-- name: invoice_policy
-- The invoice's own policy, active or not.
SELECT {policy_columns} FROM policies WHERE id = :policy_id;

-- name: product_policies
-- A product's active policies, oldest first.
SELECT {policy_columns} FROM policies WHERE product_id = :product_id AND active = 1
ORDER BY created_at, id;

-- name: upsert_instance
-- Record a process and its pass; the fields a call leaves out (NULL) keep what an earlier one wrote.
INSERT INTO reconciler_instances (lease_owner, hostname, pid, started_at, last_pass_started_at,
    last_pass_finished_at, last_summary)
VALUES (:lease_owner, :hostname, :pid, :started_at, :last_pass_started_at, :last_pass_finished_at,
    :last_summary)
ON CONFLICT (lease_owner) DO UPDATE SET
    last_pass_started_at = COALESCE(excluded.last_pass_started_at, reconciler_instances.last_pass_started_at),
    last_pass_finished_at = excluded.last_pass_finished_at,
    last_summary = COALESCE(excluded.last_summary, reconciler_instances.last_summary);

-- name: prune_instances
-- Forget processes whose last pass ended before :cutoff (never the one writing).
DELETE FROM reconciler_instances
WHERE COALESCE(last_pass_finished_at, started_at) < :cutoff AND lease_owner <> :lease_owner;

-- name: status_pending
-- `status`: pending invoices still checked, per provider id, with the oldest one's creation.
SELECT payment_provider_id, count(*) AS pending, min(created_at) AS oldest_created_at
FROM invoices
WHERE status = 'pending' AND created_at >= :min_created_at
GROUP BY payment_provider_id
ORDER BY payment_provider_id;

-- name: status_stale
-- `status`: pending invoices older than max_age, no longer checked.
SELECT count(*) FROM invoices WHERE status = 'pending' AND created_at < :min_created_at;

-- name: status_instances
-- `status`: the instances listed, latest pass first.
SELECT lease_owner, hostname, pid, started_at, last_pass_started_at, last_pass_finished_at, last_summary
FROM reconciler_instances
WHERE {instance_listed}
ORDER BY last_pass_finished_at DESC, lease_owner;

-- name: status_other_instances
-- `status`: how many instances are left out of the list.
SELECT count(*) FROM reconciler_instances WHERE NOT ({instance_listed});

-- name: status_quarantined
-- `status`: quarantined invoices, oldest first, with when their quarantine was audited last.
SELECT i.id, i.last_provider_status,
    (SELECT max(a.occurred_at) FROM audit_log AS a
     WHERE a.target_kind = 'invoice' AND a.target_id = i.id
       AND a.action IN ('invoice.unreadable', 'invoice.duplicate')) AS since
FROM invoices AS i
WHERE {quarantined}
ORDER BY i.created_at, i.id
LIMIT :limit;

-- name: status_quarantined_count
-- `status`: how many invoices are quarantined in all.
SELECT count(*) FROM invoices WHERE {quarantined};

-- name: status_review
-- `status`: the open review items per kind, with the oldest and the latest opening.
SELECT kind, count(*) AS n, min(opened_at) AS oldest, max(opened_at) AS latest
FROM review_items
WHERE status = 'open'
GROUP BY kind
ORDER BY kind;

-- name: invoice_audits
-- `explain`: the audit rows about one invoice, oldest first.
SELECT occurred_at, action, target_kind, target_id, details
FROM audit_log
WHERE target_kind = 'invoice' AND target_id = :invoice_id
ORDER BY occurred_at, id;

-- name: due_post_settle_tasks
-- Pending post-settle tasks whose next attempt is due, with what running one needs.
SELECT t.invoice_id, t.kind, t.provider_id, t.attempts, i.provider_invoice_id,
    s.id AS subscription_id, s.payment_profile_id
FROM post_settle_tasks AS t
JOIN invoices AS i ON i.id = t.invoice_id
LEFT JOIN licenses AS l ON l.invoice_id = t.invoice_id
LEFT JOIN subscriptions AS s ON s.license_id = l.id
WHERE t.status = 'pending' AND (t.next_attempt_at IS NULL OR t.next_attempt_at <= :now)
  AND NOT EXISTS (SELECT 1 FROM provider_controls AS pc WHERE pc.paused = 1 AND pc.provider_id = t.provider_id)
ORDER BY t.next_attempt_at, t.invoice_id, t.kind
LIMIT :batch_size;

-- name: claim_post_settle_task
-- Take one attempt: count it and hold the task until :lease_until (compare-and-set on attempts).
UPDATE post_settle_tasks
SET attempts = attempts + 1, next_attempt_at = :lease_until, updated_at = :now
WHERE {post_settle_task};

-- name: finish_post_settle_task
-- Record how the attempt this instance took ended.
UPDATE post_settle_tasks
SET status = :status, last_error = :last_error, next_attempt_at = :next_attempt_at, updated_at = :now
WHERE {post_settle_task};

-- name: store_payment_profile
-- Keep the buyer's saved payment profile on the subscription, unless it has one.
UPDATE subscriptions
SET provider_contact_id = :contact_id, payment_profile_id = :profile_id, payment_profile_method = :method,
    payment_profile_expires_at = :expires_at, updated_at = :now
WHERE id = :subscription_id AND payment_profile_id IS NULL;

-- The operator API (store/api.py): its keys, and the pages it reads. Every page is keyset-paginated: a
-- cursor is the last row's sort key, and the next page starts strictly after it.

-- name: insert_api_key
-- A new API key; only the SHA-256 of its token is stored.
INSERT INTO api_keys (id, label, token_hash, role, created_at)
VALUES (:id, :label, :token_hash, :role, :now);

-- name: api_key_by_hash
-- The key whose token has this SHA-256 (revoked or not).
SELECT id, label, token_hash, role, created_at, last_used_at, revoked_at FROM api_keys
WHERE token_hash = :token_hash;

-- name: api_key
-- One key by its id.
SELECT id, label, token_hash, role, created_at, last_used_at, revoked_at FROM api_keys WHERE id = :id;

-- name: api_keys
-- Every key, oldest first.
SELECT id, label, token_hash, role, created_at, last_used_at, revoked_at FROM api_keys
ORDER BY created_at, id;

-- name: revoke_api_key
-- Revoke a key that is not revoked yet.
UPDATE api_keys SET revoked_at = :now WHERE id = :id AND revoked_at IS NULL;

-- name: touch_api_key
-- Note a key's use, unless it was noted after :stale_before (at most once a minute per key).
UPDATE api_keys SET last_used_at = :now
WHERE id = :id AND revoked_at IS NULL AND (last_used_at IS NULL OR last_used_at < :stale_before);

-- part: api_invoice_columns
-- The invoice columns the API shows, as stored (an unreadable row is shown, not refused).
id, payment_provider_id, provider_invoice_id, product_id, policy_id, status, amount_sats, listed_currency,
    listed_value, subscription_id, created_at, settled_at, next_check_at, check_attempts, last_checked_at,
    last_provider_status, {has_license} AS has_license

-- name: api_invoices
-- A page of invoices, newest first, each filter skipped when its parameter is NULL; the cursor is the
-- (created_at, id) of the previous page's last row.
SELECT {api_invoice_columns} FROM invoices
WHERE (CAST(:status AS TEXT) IS NULL OR status = :status)
  AND (CAST(:provider_id AS TEXT) IS NULL OR payment_provider_id = :provider_id)
  AND (CAST(:created_before AS TEXT) IS NULL OR created_at < :created_before)
  AND (CAST(:created_after AS TEXT) IS NULL OR created_at >= :created_after)
  AND (CAST(:after_created AS TEXT) IS NULL
       OR created_at < :after_created OR (created_at = :after_created AND id < :after_id))
ORDER BY created_at DESC, id DESC
LIMIT :limit;

-- name: api_invoice
-- One invoice as the API shows it.
SELECT {api_invoice_columns} FROM invoices WHERE id = :id;

-- name: api_open_reviews
-- A page of open review items, oldest first (of one kind unless :kind is NULL); the cursor is the
-- (opened_at, id) of the previous page's last row.
SELECT r.id, r.invoice_id, r.kind, r.opened_at, r.audit_id, i.payment_provider_id, i.status AS invoice_status
FROM review_items AS r
JOIN invoices AS i ON i.id = r.invoice_id
WHERE r.status = 'open'
  AND (CAST(:kind AS TEXT) IS NULL OR r.kind = :kind)
  AND (CAST(:after_opened AS TEXT) IS NULL
       OR r.opened_at > :after_opened OR (r.opened_at = :after_opened AND r.id > :after_id))
ORDER BY r.opened_at, r.id
LIMIT :limit;

-- name: api_target_audits
-- A page of the audit rows about one target, oldest first; the cursor is the (occurred_at, id) of the
-- previous page's last row.
SELECT id, occurred_at, actor, action, target_kind, target_id, details
FROM audit_log
WHERE target_kind = :target_kind AND target_id = :target_id
  AND (CAST(:after_occurred AS TEXT) IS NULL
       OR occurred_at > :after_occurred OR (occurred_at = :after_occurred AND id > :after_id))
ORDER BY occurred_at, id
LIMIT :limit;

-- name: api_provider_controls
-- Every provider an operator paused or resumed.
SELECT provider_id, paused, changed_by, changed_at, reason FROM provider_controls ORDER BY provider_id;

-- name: claim_invoice
-- An operator's action on one invoice: lease it to :owner with a new :token until :lease_until, due or not,
-- unless another instance holds its lease (compare-and-set on the lease).
UPDATE invoices
SET lease_owner = :owner, lease_token = :token, lease_until = :lease_until
WHERE id = :invoice_id AND {not_leased}
RETURNING {invoice_columns};

-- name: post_settle_task_status
-- The status of one post-settle task of an invoice, if it exists.
SELECT status FROM post_settle_tasks WHERE invoice_id = :invoice_id AND kind = :kind;

-- name: retry_post_settle_task
-- An operator re-queues a failed post-settle task: pending again, attempts from zero, due now.
UPDATE post_settle_tasks
SET status = 'pending', attempts = 0, next_attempt_at = :now, updated_at = :now
WHERE invoice_id = :invoice_id AND kind = :kind AND status = 'failed';

-- name: pause_provider
-- An operator pauses a provider, unless it is paused already; the provider id when it changed.
INSERT INTO provider_controls (provider_id, paused, changed_by, changed_at, reason)
VALUES (:provider_id, 1, :actor, :now, :reason)
ON CONFLICT (provider_id) DO UPDATE
SET paused = 1, changed_by = excluded.changed_by, changed_at = excluded.changed_at, reason = excluded.reason
WHERE provider_controls.paused = 0
RETURNING provider_id;

-- name: resume_provider
-- An operator resumes a paused provider.
UPDATE provider_controls
SET paused = 0, changed_by = :actor, changed_at = :now, reason = :reason
WHERE provider_id = :provider_id AND paused = 1;

-- name: provider_controls
-- Every provider an operator paused or resumed, and who did it last.
SELECT provider_id, paused, changed_by, changed_at, reason FROM provider_controls ORDER BY provider_id;


-- name: insert_webhook_delivery
-- Record an accepted webhook delivery, unless its key was recorded already (a redelivery); the key when new.
INSERT INTO webhook_deliveries
    (provider_id, idempotency_key, delivery_id, event_type, provider_invoice_id, received_at, outcome)
VALUES (:provider_id, :idempotency_key, :delivery_id, :event_type, :provider_invoice_id, :received_at, :outcome)
ON CONFLICT (provider_id, idempotency_key) DO NOTHING
RETURNING idempotency_key;

-- name: webhook_invoices
-- The invoices of a provider (a row without a provider id is :default_provider's) stored under one of the ids
-- of a delivery, and whether a pass would still look at each (open, or settled without its license).
SELECT id, (status IN ('pending', 'expired', 'invalid')
            OR (status = 'settled' AND subscription_id IS NULL AND NOT {has_license})) AS open
FROM invoices
WHERE (payment_provider_id = :provider_id
       OR (payment_provider_id IS NULL AND CAST(:default_provider AS TEXT) = :provider_id))
  AND provider_invoice_id IN (SELECT value FROM {json_elements}(:ids))
ORDER BY created_at, id;

-- name: undecided_delivery
-- The invoice a recorded delivery nudged, when no decision came of it yet: no worker decided it (outcome still
-- `nudged`), nobody rescheduled the invoice since (its next check is not after the delivery) and a pass would
-- still look at it. A redelivery of such a delivery is queued again (docs/webhooks.md §2).
SELECT invoices.id
FROM webhook_deliveries AS d
JOIN invoices ON invoices.id = d.invoice_id
WHERE d.provider_id = :provider_id AND d.idempotency_key = :idempotency_key AND d.outcome = 'nudged'
  AND (invoices.next_check_at IS NULL OR invoices.next_check_at <= d.received_at)
  AND (invoices.status IN ('pending', 'expired', 'invalid')
       OR (invoices.status = 'settled' AND invoices.subscription_id IS NULL AND NOT {has_license}));

-- name: nudge_invoices
-- A webhook makes invoices due now (docs/webhooks.md §2): only the schedule, never a lease.
UPDATE invoices SET next_check_at = :now
WHERE id IN (SELECT value FROM {json_elements}(:invoice_ids));

-- name: set_webhook_delivery_invoice
-- What recording a delivery found: its outcome and the invoice it made due.
UPDATE webhook_deliveries SET outcome = :outcome, invoice_id = :invoice_id
WHERE provider_id = :provider_id AND idempotency_key = :idempotency_key;

-- name: finish_webhook_delivery
-- What became of a nudged delivery, once its decision was committed (or it was left to a pass).
UPDATE webhook_deliveries SET outcome = :outcome, decision = :decision, decided_at = :decided_at
WHERE provider_id = :provider_id AND idempotency_key = :idempotency_key;

-- name: invoice_lease
-- Who holds an invoice's lease at :now (no row when nobody does): the claim's token and when it ends.
SELECT lease_token, lease_until FROM invoices
WHERE id = :invoice_id AND lease_token IS NOT NULL AND NOT {not_leased};

-- name: prune_webhook_deliveries
-- Deliveries received before :before are forgotten (docs/webhooks.md §2: after 30 days).
DELETE FROM webhook_deliveries WHERE received_at < :before;
