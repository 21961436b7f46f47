"""The operator API's aiohttp application (docs/api.md): the routes of `openapi.OPERATIONS`, each behind
its scope, every input parsed at the door, every refusal one JSON shape (`{"error": {...}}`).

What reaches a handler has been authenticated (auth.py), holds the operation's scope, and has a body no
larger than `[api] max_body_bytes`. Path ids, query parameters and bodies are checked here before the store
sees them: text the database cannot hold (control characters, lone surrogates), unknown parameters,
malformed JSON and oversized fields are 400 with a message naming the parameter; nothing is written.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

from aiohttp import hdrs, web
from loguru import logger

from reconciler import audit, errors, ids, strict_json
from reconciler.api import auth, keys, openapi
from reconciler.config import ApiSettings
from reconciler.operator import actions
from reconciler.safe_text import UNSAFE_TEXT, short_repr
from reconciler.store import base
from reconciler.timeutil import Clock, format_ts, parse_duration

Handler = Callable[[web.Request, auth.Principal], Awaitable[web.Response]]

#: How an action's refusal (operator/actions.py) is answered.
_REFUSALS = {"not-found": 404, "not-applicable": 409, "conflict": 409, "invalid": 422}

_UNAUTHORIZED = "a valid API key is required: send Authorization: Bearer <token>"
_INVOICE_STATUSES = ("pending", "settled", "expired", "invalid")
_MAX_AGE = timedelta(days=3650)


class ApiError(Exception):
    """A refusal: its status, a stable code and a message for a person (never a secret)."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None, **extra: str
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra

    def response(self) -> web.Response:
        body = {"error": {"status": self.status, "code": self.code, "message": self.message, **self.extra}}
        return _json(body, status=self.status, headers=self.headers)


def _json(data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    text = json.dumps(data, sort_keys=True, default=str)
    return web.Response(text=text, status=status, content_type="application/json", headers=headers)


def _bad(message: str, code: str = "bad-request") -> ApiError:
    return ApiError(400, code, message)


class ApiServer:
    """The API on its own listener (`[api] listen`), started and stopped by the daemon."""

    def __init__(
        self,
        store: base.Store,
        settings: ApiSettings,
        *,
        providers: Mapping[str, dict[str, Any]],
        circuits: Callable[[], Mapping[str, str]],
        operator: actions.Operator | None = None,
        clock: Clock,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.host = settings.host
        self.port = settings.port
        self.store = store
        self.providers = dict(providers)
        self.circuits = circuits
        self.operator = operator
        self.clock = clock
        self.max_page = min(settings.max_page, openapi.MAX_PAGE)
        self.auth = auth.Authenticator(
            store,
            settings.master_key,
            limiter=auth.FailureLimiter(
                max_failures=settings.max_failures, window=settings.failure_window.total_seconds()
            ),
            clock=clock,
            monotonic=monotonic,
        )
        self.document = openapi.document()
        self.app = web.Application(middlewares=[self._errors], client_max_size=settings.max_body_bytes)
        for op in openapi.OPERATIONS:
            self.app.router.add_route(
                op.method, op.path, self._guarded(op, getattr(self, f"_{op.operation_id}"))
            )
        self._runner: web.AppRunner | None = None

    # -- the listener -------------------------------------------------------------------------------------
    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        addresses = self._runner.addresses
        if addresses:
            self.port = int(addresses[0][1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- the door -----------------------------------------------------------------------------------------
    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPRequestEntityTooLarge:
            return _too_large(self.settings.max_body_bytes).response()
        except web.HTTPMethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.allowed_methods))
            return ApiError(
                405,
                "method-not-allowed",
                f"{request.method} is not allowed here (allowed: {allowed})",
                headers={hdrs.ALLOW: allowed},
            ).response()
        except web.HTTPNotFound:
            return ApiError(
                404, "no-route", "no such route (the document is at /api/v1/openapi.json)"
            ).response()
        except web.HTTPException as exc:
            return ApiError(exc.status, "http-error", exc.reason).response()
        except (errors.StoreUnavailable, errors.SchemaError) as exc:
            logger.warning("api: {} {}: database: {}", request.method, _route(request), exc.message)
            return ApiError(
                503, "database-unavailable", f"the database is unavailable: {exc.message}"
            ).response()
        except Exception as exc:
            logger.opt(exception=exc).error(
                "api: {} {} failed: {}", request.method, _route(request), type(exc).__name__
            )
            return ApiError(500, "internal-error", "internal error (logged)").response()

    def _guarded(
        self, op: openapi.Operation, handler: Handler
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def guarded(request: web.Request) -> web.Response:
            principal = auth.MASTER if op.scope is None else await self._principal(request)
            if op.scope is not None and op.scope not in principal.scopes:
                if op.scope == keys.MANAGE_KEYS:
                    message = "managing API keys needs the master key"
                else:
                    message = f"{principal.who} lacks the scope {op.scope}"
                raise ApiError(403, "forbidden", message, scope=op.scope)
            _check_query(request, op)
            for name in op.path_params:
                _path_id(request, name)
            return await handler(request, principal)

        return guarded

    async def _principal(self, request: web.Request) -> auth.Principal:
        address = request.remote or "unknown"
        try:
            return await self.auth.authenticate(request.headers.get(hdrs.AUTHORIZATION), address)
        except auth.Throttled as exc:
            logger.warning(
                "api: too many failed authentications from {}: refused for {}s", address, exc.retry_after
            )
            raise ApiError(
                429,
                "too-many-failures",
                f"too many failed authentications from this address: retry after {exc.retry_after}s",
                headers={hdrs.RETRY_AFTER: str(exc.retry_after)},
            ) from None
        except auth.Unauthorized:
            logger.info("api: {} {} from {}: not authenticated", request.method, _route(request), address)
            raise ApiError(
                401, "unauthorized", _UNAUTHORIZED, headers={hdrs.WWW_AUTHENTICATE: "Bearer"}
            ) from None

    async def _body(self, request: web.Request, *, required: bool = True) -> dict[str, Any]:
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _too_large(limit)
        raw = await request.read()
        if not raw and not required:
            return {}
        if request.content_type != "application/json":
            raise _bad(
                f"the body must be JSON (Content-Type: application/json), not {request.content_type!r}"
            )
        try:
            value = strict_json.decode_json(raw)
        except strict_json.UnreadableJson as exc:
            raise _bad(f"the body is not JSON this API reads: {exc}", "malformed-json") from None
        if not isinstance(value, dict):
            raise _bad("the body must be a JSON object", "malformed-json")
        return value

    # -- meta -----------------------------------------------------------------------------------------------
    async def _openapi(self, request: web.Request, _: auth.Principal) -> web.Response:
        return _json(self.document)

    # -- reads ----------------------------------------------------------------------------------------------
    async def _list_reviews(self, request: web.Request, _: auth.Principal) -> web.Response:
        kind = _text_param(request, "kind", 64)
        page = self._page(request)
        items = await self.store.api_open_reviews(kind, page)
        return _json(_paged(items, page, "opened_at"))

    async def _list_invoices(self, request: web.Request, _: auth.Principal) -> web.Response:
        status = request.query.get("status")
        if status is not None and status not in _INVOICE_STATUSES:
            raise _bad(f"status: one of {', '.join(_INVOICE_STATUSES)}, not {short_repr(status)}")
        now = self.clock()
        min_age, max_age = _age(request, "min_age"), _age(request, "max_age")
        where = base.InvoiceFilter(
            status=status,
            provider_id=_text_param(request, "provider", 64),
            created_before=format_ts(now - min_age) if min_age is not None else None,
            created_after=format_ts(now - max_age) if max_age is not None else None,
        )
        page = self._page(request)
        items = await self.store.api_invoices(where, page)
        return _json(_paged(items, page, "created_at"))

    async def _get_invoice(self, request: web.Request, _: auth.Principal) -> web.Response:
        invoice_id = request.match_info["invoice_id"]
        invoice = await self.store.api_invoice(invoice_id)
        if invoice is None:
            raise _no_invoice(invoice_id)
        page = base.PageRequest(limit=self.max_page)
        audits = await self.store.api_target_audits("invoice", invoice_id, page)
        decision: dict[str, Any] | None = None
        decision_error = None
        if self.operator is None:
            decision_error = "no decision: this API runs without the reconciler's drivers"
        else:
            try:
                decision = await self.operator.decide_now(invoice_id)
            except actions.ActionRefused as exc:
                decision_error = exc.message
        return _json(
            {
                "invoice": invoice,
                "license": await self.store.license_of(invoice_id),
                "audit": _paged(audits, page, "occurred_at"),
                "decision": decision,
                "decision_error": decision_error,
            }
        )

    async def _list_audit(self, request: web.Request, _: auth.Principal) -> web.Response:
        target_kind, target_id = request.match_info["target_kind"], request.match_info["target_id"]
        page = self._page(request)
        items = await self.store.api_target_audits(target_kind, target_id, page)
        return _json(_paged(items, page, "occurred_at"))

    async def _list_providers(self, request: web.Request, _: auth.Principal) -> web.Response:
        controls = await self.store.api_provider_controls()
        circuits = self.circuits()
        items = []
        for provider_id in sorted(set(self.providers) | set(controls)):
            control = controls.get(provider_id, {})
            paused = bool(control.get("paused", False))
            items.append(
                {
                    "id": provider_id,
                    "configured": provider_id in self.providers,
                    "settings": self.providers.get(provider_id),
                    "paused": paused,
                    "paused_by": control.get("changed_by") if paused else None,
                    "paused_at": control.get("changed_at") if paused else None,
                    "pause_reason": control.get("reason") if paused else None,
                    "circuit": circuits.get(provider_id),
                }
            )
        return _json({"items": items, "next_cursor": None})

    async def _list_instances(self, request: web.Request, _: auth.Principal) -> web.Response:
        rows = await self.store.api_instances()
        items = [
            {
                "lease_owner": row.lease_owner,
                "hostname": row.hostname,
                "pid": row.pid,
                "started_at": format_ts(row.started_at),
                "last_pass_started_at": _ts(row.last_pass_started_at),
                "last_pass_finished_at": _ts(row.last_pass_finished_at),
                "last_summary": row.last_summary if isinstance(row.last_summary, dict) else None,
            }
            for row in rows
        ]
        return _json({"items": items, "next_cursor": None})

    # -- actions (operator/actions.py), each audited with the key's id as the actor ---------------------------
    async def _act(self, what: str, target_id: str, action: Awaitable[Any]) -> web.Response:
        try:
            result = await action
        except actions.ActionRefused as exc:
            raise ApiError(_REFUSALS.get(exc.code, 409), exc.code, exc.message) from None
        except errors.SigningKeyError as exc:
            raise ApiError(503, "no-signing-key", exc.message) from None
        if result is None:
            return _json({"action": what, "target_id": target_id})
        return _json({"action": what, "target_id": target_id, **result.to_dict()})

    def _actions(self) -> actions.Operator:
        if self.operator is None:
            raise ApiError(
                503, "no-actions", "actions are not available: this API runs without the reconciler"
            )
        return self.operator

    async def _recheck(self, request: web.Request, who: auth.Principal) -> web.Response:
        invoice_id = request.match_info["invoice_id"]
        return await self._act("recheck", invoice_id, self._actions().recheck(invoice_id, _actor(who)))

    async def _settle(self, request: web.Request, who: auth.Principal) -> web.Response:
        invoice_id = request.match_info["invoice_id"]
        reason = _reason(await self._body(request), required=True)
        return await self._act(
            "settle", invoice_id, self._actions().settle_flagged(invoice_id, reason or "", _actor(who))
        )

    async def _dismiss(self, request: web.Request, who: auth.Principal) -> web.Response:
        item_id = request.match_info["item_id"]
        reason = _reason(await self._body(request), required=True)
        return await self._act(
            "dismiss", item_id, self._actions().dismiss(item_id, reason or "", _actor(who))
        )

    async def _retry_task(self, request: web.Request, who: auth.Principal) -> web.Response:
        invoice_id, kind = request.match_info["invoice_id"], request.match_info["kind"]
        return await self._act(
            "retry_task", invoice_id, self._actions().retry_task(invoice_id, kind, _actor(who))
        )

    async def _pause_provider(self, request: web.Request, who: auth.Principal) -> web.Response:
        provider_id = request.match_info["provider_id"]
        reason = _reason(await self._body(request, required=False), required=False)
        return await self._act(
            "pause", provider_id, self._actions().pause_provider(provider_id, _actor(who), reason)
        )

    async def _resume_provider(self, request: web.Request, who: auth.Principal) -> web.Response:
        provider_id = request.match_info["provider_id"]
        reason = _reason(await self._body(request, required=False), required=False)
        return await self._act(
            "resume", provider_id, self._actions().resume_provider(provider_id, _actor(who), reason)
        )

    # -- keys (master key only) -------------------------------------------------------------------------------
    async def _create_api_key(self, request: web.Request, caller: auth.Principal) -> web.Response:
        body = await self._body(request)
        _only_fields(body, {"role", "label"})
        try:
            role = keys.check_role(body.get("role"))
            label = keys.check_label(body.get("label"), limit=openapi.MAX_LABEL)
        except ValueError as exc:
            raise _bad(str(exc), "invalid-field") from None
        key_id, token = ids.new_id(), keys.new_token()
        await self.store.insert_api_key(
            key_id=key_id,
            label=label,
            token_hash=keys.token_hash(token),
            role=role,
            now=self.clock(),
            audits=(audit.api_key_created(key_id, role=role, label=label, actor=caller.actor),),
        )
        row = await self.store.api_key(key_id)
        assert row is not None
        logger.info("api: API key {} created (role {}, label {})", key_id, role, short_repr(label))
        return _json({"key": _key(row), "token": token}, status=201)

    async def _list_api_keys(self, request: web.Request, _: auth.Principal) -> web.Response:
        return _json({"items": [_key(row) for row in await self.store.api_keys()], "next_cursor": None})

    async def _revoke_api_key(self, request: web.Request, caller: auth.Principal) -> web.Response:
        key_id = request.match_info["key_id"]
        revoked = (audit.api_key_revoked(key_id, actor=caller.actor),)
        if not await self.store.revoke_api_key(key_id, now=self.clock(), audits=revoked):
            row = await self.store.api_key(key_id)
            if row is None:
                raise ApiError(404, "not-found", f"no API key with id {short_repr(key_id)}")
            raise ApiError(409, "already-revoked", f"API key {key_id} was revoked at {row.revoked_at}")
        row = await self.store.api_key(key_id)
        assert row is not None
        logger.info("api: API key {} revoked", key_id)
        return _json(_key(row))

    # -- helpers ----------------------------------------------------------------------------------------------
    def _page(self, request: web.Request) -> base.PageRequest:
        text = request.query.get("limit")
        limit = 50
        if text is not None:
            if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= openapi.MAX_PAGE:
                raise _bad(f"limit: a whole number from 1 to {openapi.MAX_PAGE}, not {short_repr(text)}")
            limit = int(text)
        return base.PageRequest(limit=min(limit, self.max_page), after=_cursor(request.query.get("cursor")))


def _check_query(request: web.Request, op: openapi.Operation) -> None:
    known = {p.name for p in op.query}
    for name in request.query:
        if name not in known:
            accepted = ", ".join(sorted(known)) or "none"
            raise _bad(f"unknown query parameter {short_repr(name)} (accepted: {accepted})")
        if len(request.query.getall(name)) > 1:
            raise _bad(f"query parameter {name} given more than once")
        if not _storable(request.query[name], 512):
            raise _bad(f"{name}: control characters or more than 512 characters")


def _path_id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not _storable(value, openapi.MAX_ID) or not value:
        raise ApiError(
            404, "not-found", f"{name}: no such id (ids have 1 to {openapi.MAX_ID} printable characters)"
        )
    return value


def _storable(text: str, limit: int) -> bool:
    return len(text) <= limit and UNSAFE_TEXT.search(text) is None


def _text_param(request: web.Request, name: str, limit: int) -> str | None:
    value = request.query.get(name)
    if value is not None and (not value or len(value) > limit):
        raise _bad(f"{name}: 1 to {limit} characters")
    return value


def _age(request: web.Request, name: str) -> timedelta | None:
    text = request.query.get(name)
    if text is None:
        return None
    try:
        age = parse_duration(text)
    except ValueError as exc:
        raise _bad(f"{name}: {exc}") from None
    if age > _MAX_AGE:
        raise _bad(f"{name}: at most 3650d")
    return age


def _only_fields(body: Mapping[str, Any], accepted: set[str]) -> None:
    unknown = sorted(set(body) - accepted)
    if unknown:
        raise _bad(f"unknown field {short_repr(unknown[0])} (accepted: {', '.join(sorted(accepted))})")


def _text_field(body: Mapping[str, Any], name: str, limit: int, *, required: bool) -> str | None:
    """A text field a person wrote (a reason, a label): 1 to `limit` characters, not only spaces, no control
    characters."""
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _bad(f"{name}: required, a non-empty string", "invalid-field")
    if len(value) > limit:
        raise _bad(f"{name}: at most {limit} characters (got {len(value)})", "invalid-field")
    if UNSAFE_TEXT.search(value):
        raise _bad(f"{name}: control characters are not accepted", "invalid-field")
    return value


def _actor(who: auth.Principal) -> actions.Actor:
    return actions.Actor(who.actor)


def _reason(body: Mapping[str, Any], *, required: bool) -> str | None:
    """The body's `reason` (its content is the action's to judge: empty, too long, control characters)."""
    _only_fields(body, {"reason"})
    if "reason" not in body and not required:
        return None
    reason = body.get("reason")
    if not isinstance(reason, str):
        raise _bad("reason: required, a string saying why", "invalid-field")
    return reason


def _cursor(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(text.encode("ascii") + b"=" * (-len(text) % 4)))
    except (UnicodeEncodeError, binascii.Error, ValueError):
        value = None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(part, str) and _storable(part, openapi.MAX_ID) for part in value)
    ):
        raise _bad("cursor: not one this API gave (pass next_cursor as it came)", "bad-cursor")
    return value[0], value[1]


def _paged(items: list[dict[str, Any]], page: base.PageRequest, key: str) -> dict[str, Any]:
    cursor = None
    if len(items) == page.limit and items:
        last = items[-1]
        raw = json.dumps([str(last[key]), str(last["id"])]).encode("utf-8", "surrogatepass")
        cursor = base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
    return {"items": items, "next_cursor": cursor}


def _key(row: base.ApiKeyRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "label": row.label,
        "role": row.role,
        "created_at": row.created_at,
        "last_used_at": row.last_used_at,
        "revoked_at": row.revoked_at,
    }


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "body-too-large", f"the body is larger than {limit} bytes ([api] max_body_bytes)")


def _no_invoice(invoice_id: str) -> ApiError:
    return ApiError(404, "not-found", f"no invoice with id {short_repr(invoice_id)}")


def _route(request: web.Request) -> str:
    """The route's template (never the raw path or query, which a caller chose)."""
    info = request.match_info.route.resource
    return info.canonical if info is not None else "(no route)"


def _ts(value: Any) -> str | None:
    return format_ts(value) if value is not None else None
