"""OpenAPI 3.0 fixtures as JSON Schema, so the fake servers can be checked against what providers publish.

The fixtures live outside the repository (``RECONCILER_FIXTURES``, default ``../shared/fixtures`` next to
the repo) and are never copied in. A test that needs them calls :func:`require_fixtures`: it skips when
they are missing, except under ``CI=true`` where a missing fixture fails the run.

:class:`OpenAPIDocument` merges one or several OpenAPI 3.0 JSON files (BTCPay ships fragments whose
``$ref``s point into a shared ``swagger.template.json``), resolves ``$ref``s and translates the OpenAPI
3.0 schema dialect to JSON Schema 2020-12:

- ``nullable: true`` adds ``null`` to ``type`` (and to ``enum``), or wraps a composed schema in
  ``anyOf: [null, schema]``;
- an ``allOf`` with a closed part (``additionalProperties: false``) is merged into one object schema,
  which is what generators mean by it (read literally, the closed part would refuse the other parts'
  properties);
- boolean ``exclusiveMinimum``/``exclusiveMaximum`` become numbers; ``x-*``, ``example``,
  ``discriminator`` and other OpenAPI-only keywords are dropped;
- ``format: decimal`` (a decimal string) and ``int32``/``int64`` (an integral number in range) are
  checked; other formats are annotations.

What a real server sends that the document does not describe is a :class:`Deviation`: a name, the
reason, and a patch to a copy of the raw document. A response is validated against the document with
exactly the deviations the fake says it used, so everything else stays strict.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

__all__ = [
    "NO_BODY",
    "Deviation",
    "OpenAPIDocument",
    "UndocumentedResponse",
    "fixtures_dir",
    "require_fixtures",
    "schema_errors",
]

Schema = dict[str, Any]

NO_BODY: Schema = {"type": "null"}
"""The schema of a response the document lists without content: the body must be empty (``None``)."""

_REPO_ROOT = Path(__file__).resolve().parents[2]
_OPENAPI_ONLY = frozenset({"nullable", "discriminator", "xml", "externalDocs", "example", "deprecated"})
_MERGEABLE = frozenset({"type", "properties", "required", "additionalProperties", "description", "title"})
_DECIMAL = re.compile(r"-?\d+(\.\d+)?")
_INT_RANGES = {"int32": 2**31, "int64": 2**63}


def fixtures_dir() -> Path:
    """Where the OpenAPI fixtures are: ``$RECONCILER_FIXTURES``, else ``shared/fixtures`` beside the repo."""
    configured = os.environ.get("RECONCILER_FIXTURES")
    return Path(configured) if configured else _REPO_ROOT.parent / "shared" / "fixtures"


def require_fixtures(*relative: str) -> Path:
    """The fixtures folder (or a path inside it); skip the test when missing, fail when ``CI=true``."""
    path = fixtures_dir().joinpath(*relative)
    if not path.exists():
        reason = f"OpenAPI fixture {path} not found (set RECONCILER_FIXTURES to the shared/fixtures folder)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@dataclass(frozen=True)
class Deviation:
    """A named way a real server departs from its published document.

    ``patch`` edits a deep copy of the raw (merged, untranslated) document so that it describes the
    deviating response; ``None`` means the response is a deliberate fault (garbage, wrong shape) whose
    body is not validated at all.
    """

    name: str
    why: str
    patch: Callable[[dict[str, Any]], None] | None


class UndocumentedResponse(LookupError):
    """The document describes no such operation or response status."""


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker(formats=())

    def decimal(value: object) -> bool:
        return not isinstance(value, str) or _DECIMAL.fullmatch(value) is not None

    def _integral(bound: int) -> Callable[[object], bool]:
        def check(value: object) -> bool:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return True
            return float(value).is_integer() and -bound <= value < bound

        return check

    checker.checks("decimal")(decimal)
    for name, bound in _INT_RANGES.items():
        checker.checks(name)(_integral(bound))
    return checker


_FORMATS = _format_checker()


class OpenAPIDocument:
    """A merged OpenAPI 3.0 document that answers "what may this response look like?" in JSON Schema.

    ``aliases`` maps a path template the server serves to the documented template of the same
    operation (e.g. BTCPay's store-scoped ``/api/v1/stores/{storeId}/invoices/{invoiceId}``, which
    v2.4 documents only as ``/api/v1/invoices/{invoiceId}``).
    """

    def __init__(self, raw: Mapping[str, Any], *, aliases: Mapping[str, str] | None = None) -> None:
        self._raw: dict[str, Any] = copy.deepcopy(dict(raw))
        self._aliases = dict(aliases or {})
        self._schemas: dict[tuple[str, str, int], Schema] = {}
        self._patched: dict[tuple[str, ...], OpenAPIDocument] = {}

    @classmethod
    def load(cls, *files: Path, aliases: Mapping[str, str] | None = None) -> OpenAPIDocument:
        """Merge OpenAPI JSON files; a path or component defined twice differently is an error."""
        merged: dict[str, Any] = {"paths": {}, "components": {}}
        for file in files:
            document = json.loads(file.read_text(encoding="utf-8"))
            for template, item in document.get("paths", {}).items():
                _merge_entry(merged["paths"], template, item, file)
            for section, entries in document.get("components", {}).items():
                target = merged["components"].setdefault(section, {})
                for name, entry in entries.items():
                    _merge_entry(target, name, entry, file)
        return cls(merged, aliases=aliases)

    @property
    def raw(self) -> dict[str, Any]:
        """A copy of the merged, untranslated document."""
        return copy.deepcopy(self._raw)

    def operation(self, method: str, path_template: str) -> dict[str, Any]:
        """The raw operation object for ``method`` on ``path_template`` (aliases applied)."""
        documented = self._aliases.get(path_template, path_template)
        operation = self._raw["paths"].get(documented, {}).get(method.lower())
        if operation is None:
            raise UndocumentedResponse(f"{method.upper()} {path_template} is not in the document")
        return dict(operation)

    def component_schema(self, name: str) -> Schema:
        """``#/components/schemas/<name>`` translated to JSON Schema."""
        return self._translate({"$ref": f"#/components/schemas/{name}"}, ())

    def response_schema(self, method: str, path_template: str, status: int) -> Schema:
        """The JSON Schema of the body of ``status`` (exact, then ``5XX``-style, then ``default``).

        A response listed without content gives :data:`NO_BODY`. Raises :class:`UndocumentedResponse`.
        """
        key = (method.lower(), path_template, status)
        if key not in self._schemas:
            responses = self.operation(method, path_template).get("responses", {})
            for candidate in (str(status), f"{status // 100}XX", "default"):
                if candidate in responses:
                    response = self._resolve(responses[candidate], ())
                    break
            else:
                raise UndocumentedResponse(f"{method.upper()} {path_template} does not document {status}")
            self._schemas[key] = self._body_schema(response)
        return self._schemas[key]

    def request_schema(self, method: str, path_template: str) -> Schema:
        """The JSON Schema of the operation's JSON request body (what a fake checks a request against).

        Raises :class:`UndocumentedResponse` when the operation takes no body."""
        body = self.operation(method, path_template).get("requestBody")
        content = self._resolve(body, ()).get("content") if isinstance(body, dict) else None
        if not content:
            raise UndocumentedResponse(f"{method.upper()} {path_template} documents no request body")
        media = next((m for m in content if "json" in m), next(iter(content)))
        return self._translate(content[media].get("schema", {}), ())

    def with_deviations(self, deviations: Iterable[Deviation]) -> OpenAPIDocument:
        """This document patched by every deviation that has a patch (cached per set of names)."""
        chosen = sorted({d.name: d for d in deviations if d.patch is not None}.values(), key=lambda d: d.name)
        names = tuple(d.name for d in chosen)
        if not names:
            return self
        if names not in self._patched:
            raw = self.raw
            for deviation in chosen:
                assert deviation.patch is not None
                deviation.patch(raw)
            self._patched[names] = OpenAPIDocument(raw, aliases=self._aliases)
        return self._patched[names]

    def validate_response(
        self,
        method: str,
        path_template: str,
        status: int,
        body: Any,
        *,
        deviations: Iterable[Deviation] = (),
    ) -> None:
        """Raise a readable AssertionError unless ``body`` (parsed JSON, ``None`` when empty) conforms.

        ``deviations`` are the named departures this response uses; a deviation without a patch (a
        deliberate fault) exempts the body from validation.
        """
        deviations = tuple(deviations)
        if any(d.patch is None for d in deviations):
            return
        where = f"{method.upper()} {path_template} → {status}"
        if deviations:
            where += f" (deviations: {', '.join(sorted(d.name for d in deviations))})"
        try:
            schema = self.with_deviations(deviations).response_schema(method, path_template, status)
        except UndocumentedResponse as exc:
            raise AssertionError(f"{where}: {exc}; name a deviation if real servers send it") from None
        problems = schema_errors(schema, body)
        if problems:
            listing = "\n  ".join(problems)
            raise AssertionError(f"{where} does not match the document:\n  {listing}")

    def _body_schema(self, response: Mapping[str, Any]) -> Schema:
        content = response.get("content")
        if not content:
            return NO_BODY
        media = next((m for m in content if "json" in m), next(iter(content)))
        return self._translate(content[media].get("schema", {}), ())

    def _resolve(self, node: Any, seen: tuple[str, ...]) -> Any:
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if not ref.startswith("#/"):
                raise ValueError(f"only local $refs are supported, got {ref}")
            if ref in seen:
                raise ValueError(f"recursive $ref {ref} is not supported")
            seen = (*seen, ref)
            node = self._raw
            for part in ref[2:].split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def _translate(self, node: Any, seen: tuple[str, ...]) -> Schema:
        if isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if ref in seen:
                raise ValueError(f"recursive $ref {ref} is not supported")
            return self._translate(self._resolve(node, ()), (*seen, ref))
        if not isinstance(node, dict):
            raise ValueError(f"not a schema: {node!r}")
        out: Schema = {}
        for key, value in node.items():
            if key in _OPENAPI_ONLY or key.startswith("x-"):
                continue
            if key == "properties":
                out[key] = {name: self._translate(sub, seen) for name, sub in value.items()}
            elif key in ("items", "not") or (key == "additionalProperties" and isinstance(value, dict)):
                out[key] = self._translate(value, seen)
            elif key in ("allOf", "anyOf", "oneOf"):
                out[key] = [self._translate(sub, seen) for sub in value]
            elif key in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool):
                bound = "minimum" if key == "exclusiveMinimum" else "maximum"
                if value:
                    out[key] = node[bound]
            else:
                out[key] = copy.deepcopy(value)
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            if key in out and out.get(bound) == out[key]:
                del out[bound]
        if "allOf" in out and any(part.get("additionalProperties") is False for part in out["allOf"]):
            out = _merge_all_of(out)
        if node.get("nullable") is True:
            out = _nullable(out)
        return out


def schema_errors(schema: Schema, body: Any) -> list[str]:
    """Every way ``body`` violates ``schema``, as ``$.path: message`` lines (empty when it conforms)."""
    validator = jsonschema.Draft202012Validator(schema, format_checker=_FORMATS)
    lines = []
    for error in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path))):
        best = jsonschema.exceptions.best_match(error.context) if error.context else error
        lines.append(f"{best.json_path}: {best.message}")
    return lines


def _merge_entry(target: dict[str, Any], name: str, entry: Any, file: Path) -> None:
    if name in target and target[name] != entry:
        raise ValueError(f"{file.name} redefines {name!r} differently")
    target[name] = entry


def _merge_all_of(schema: Schema) -> Schema:
    """One closed object schema from ``allOf`` parts (and the schema's own sibling keywords)."""
    parts = [{k: v for k, v in schema.items() if k != "allOf"}, *schema["allOf"]]
    merged: Schema = {"type": "object", "additionalProperties": False}
    properties: dict[str, Schema] = {}
    required: list[str] = []
    for part in parts:  # already translated: a closed allOf inside a part is merged already
        unknown = set(part) - _MERGEABLE
        if unknown:
            raise ValueError(f"cannot merge an allOf part with {sorted(unknown)}")
        if part.get("type", "object") not in ("object", ["object", "null"]):
            raise ValueError(f"cannot merge an allOf part of type {part['type']!r}")
        for name, sub in part.get("properties", {}).items():
            properties[name] = {"allOf": [properties[name], sub]} if name in properties else sub
        required.extend(r for r in part.get("required", []) if r not in required)
        for key in ("description", "title"):
            if key in part:
                merged.setdefault(key, part[key])
    merged["properties"] = properties
    if required:
        merged["required"] = required
    return merged


def _nullable(schema: Schema) -> Schema:
    composed = {"allOf", "anyOf", "oneOf", "not", "$ref"} & set(schema)
    if isinstance(schema.get("type"), str) and not composed:
        out = {**schema, "type": [schema["type"], "null"]}
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        return out
    return {"anyOf": [{"type": "null"}, schema]}
