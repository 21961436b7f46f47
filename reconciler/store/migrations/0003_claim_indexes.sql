-- Schema version 3 (docs/schema.md §6): two partial indexes that let a claim read its batch in order from an
-- index instead of sorting every candidate (docs/reconcile.md §1). Nothing else changes.
--   invoices_due        the open invoices (pending, expired, invalid) by next check, creation, id
--   invoices_due_early  those of them whose next check is set before their creation (a storefront's odd row),
--                       by creation, so a claim never walks the open rows that aged out of the candidate window
-- Applied by `reconciler migrate`; stop every instance first: an older release refuses a version-3 database.

-- name: upgrade
-- The statements that take a version-2 database to version 3, run in one transaction.
CREATE INDEX invoices_due ON invoices (next_check_at, created_at, id)
    WHERE status IN ('pending', 'expired', 'invalid');
CREATE INDEX invoices_due_early ON invoices (created_at, next_check_at)
    WHERE status IN ('pending', 'expired', 'invalid') AND next_check_at < created_at
