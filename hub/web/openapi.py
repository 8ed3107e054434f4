"""The OpenAPI 3.1 document of the REST API (and the public JSON form endpoint).

Served without auth at `GET /api/v1/openapi.json`. Kept by hand next to `hub/web/api.py`;
`tests/hostile/test_openapi.py` fails when a registered /api/v1 route is missing here, and
runs schemathesis against the live hub so the document and the code cannot drift apart.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from aiohttp import web

from hub.domain import LeadKind, LeadStatus
from hub.web.idempotency import IDEMPOTENCY_KEY_PATTERN

PREFIX = "/api/v1"
OPENAPI_PATH = f"{PREFIX}/openapi.json"

_NULLABLE_STRING = {"type": ["string", "null"]}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    """Error responses, all in the one shape `{"error", "detail"}`."""
    texts = {
        400: "The body is not readable (not JSON, not UTF-8, a malformed form, too many fields) or was rejected",
        401: "Missing or wrong bearer token",
        404: "No such lead, inbox item or form",
        405: "Method not allowed",
        409: "The action does not fit the current state",
        413: "The body is larger than web.max_body_bytes",
        415: "Unsupported Content-Type",
        422: "Validation failed; `fields` names each bad field",
        429: "Too many submissions from this address; see Retry-After",
        503: "The database is unavailable; retry later",
    }
    responses: dict[str, Any] = {}
    for status in statuses:
        schema = _ref("ValidationError") if status == 422 else _ref("Error")
        response = _json(schema, texts[status])
        if status == 429:
            response["headers"] = {
                "Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}
            }
        if status == 401:
            response["headers"] = {
                "WWW-Authenticate": {"description": "Bearer challenge", "schema": {"type": "string"}}
            }
        if status == 405:
            response["headers"] = {
                "Allow": {"description": "The methods the path serves", "schema": {"type": "string"}}
            }
        responses[str(status)] = response
    return responses


_LEAD_NUMBER = {
    "name": "number",
    "in": "path",
    "required": True,
    "description": "The lead number: L-1042 (or 1042)",
    "schema": {"type": "string", "pattern": r"^(#?[Ll]-?)?[0-9]{1,12}$"},
}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Repeating a request with the same key returns the first result (200) instead of a copy; "
        "the same key with other fields is 422 `idempotency_key_reused` and stores nothing"
    ),
    "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
}

_REPLY_IDEMPOTENCY_KEY = {
    **_IDEMPOTENCY_KEY,
    "description": "Scoped to the lead: repeating a reply with the same key returns the first one (200) "
    "instead of a copy; the same key with another text or author is 422 `idempotency_key_reused` "
    "and records nothing",
}

_ONE_LINE = "^[^\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029]*$"
# At least one way to reach the customer.
_CONTACT_REQUIRED = [{"required": ["email"]}, {"required": ["phone"]}, {"required": ["telegram"]}]

_SUBMISSION_PROPERTIES: dict[str, Any] = {
    "name": {"type": "string", "maxLength": 200, "pattern": _ONE_LINE, "description": "One line"},
    "email": {"type": "string", "maxLength": 254, "format": "email"},
    "phone": {
        "type": "string",
        "maxLength": 25,
        "description": "A valid phone number as people write it, spaces, dots, dashes and brackets "
        "allowed: with its country code (`+380 67 123 45 67`, `00380671234567`) or without one, read "
        "as Ukrainian (`067 123 45 67`, `8 067 123 45 67`); stored as E.164 (`+380671234567`)",
    },
    "telegram": {"type": "string", "maxLength": 64, "description": "Telegram username"},
    "subject": {"type": "string", "maxLength": 300, "pattern": _ONE_LINE, "description": "One line"},
    "message": {"type": "string", "minLength": 1, "maxLength": 10_000},
}


def _schemas() -> dict[str, Any]:
    lead_properties: dict[str, Any] = {
        "lead": {"type": "string", "pattern": "^L-[0-9]+$"},
        "number": {"type": "integer", "minimum": 1},
        "kind": {"type": "string", "enum": [k.value for k in LeadKind]},
        "channel": {"type": "string"},
        "status": {"type": "string", "enum": [s.value for s in LeadStatus]},
        "subject": {"type": "string"},
        "form": _NULLABLE_STRING,
        "contact_id": {"type": "string"},
        "assignee": _NULLABLE_STRING,
        "team": _NULLABLE_STRING,
        "priority": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "first_response_due": _NULLABLE_TIME,
        "warn_due": _NULLABLE_TIME,
        "first_response_at": _NULLABLE_TIME,
        "resolved_at": _NULLABLE_TIME,
        "warned_at": _NULLABLE_TIME,
        "breached_at": _NULLABLE_TIME,
        "breached": {"type": "boolean"},
    }
    message = {
        "type": "object",
        "required": ["id", "direction", "channel", "author", "text", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "direction": {"type": "string", "enum": ["in", "out", "note"]},
            "channel": {"type": "string"},
            "author": {"type": "string"},
            "subject": {
                **_NULLABLE_STRING,
                "description": "a follow-up's own subject when it differs from its lead's",
            },
            "text": {"type": "string"},
            "html": _NULLABLE_STRING,
            "attachments": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "type": {"type": "string"},
                        "size": {"type": "integer"},
                        "dropped": _NULLABLE_STRING,
                    },
                },
            },
            "delivery": {"type": ["string", "null"], "enum": ["queued", "sent", "failed", None]},
            "created_at": {"type": "string", "format": "date-time"},
        },
    }
    inbox_item = {
        "type": "object",
        "required": ["id", "channel", "external_id", "status", "received_at", "attempts", "size"],
        "properties": {
            "id": {"type": "integer"},
            "channel": {"type": "string"},
            "external_id": {"type": "string"},
            "status": {"type": "string", "enum": ["pending", "done", "quarantined"]},
            "reason": _NULLABLE_STRING,
            "received_at": {"type": "string", "format": "date-time"},
            "lead": _NULLABLE_STRING,
            "attempts": {"type": "integer"},
            "size": {"type": "integer"},
        },
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error", "detail"],
            "properties": {
                "error": {"type": "string", "description": "A stable machine-readable code"},
                "detail": {"type": "string", "description": "What went wrong, for a human"},
            },
        },
        "ValidationError": {
            "allOf": [
                _ref("Error"),
                {
                    "type": "object",
                    "properties": {
                        "fields": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                            "description": "Each bad field and what is wrong with it",
                        },
                        "forms": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "With `unknown_form`: the form names accepted",
                        },
                    },
                },
            ]
        },
        "Lead": {"type": "object", "required": list(lead_properties), "properties": lead_properties},
        "LeadDetail": {
            "allOf": [
                _ref("Lead"),
                {
                    "type": "object",
                    "required": ["contact", "messages", "events"],
                    "properties": {
                        "contact": {
                            "type": ["object", "null"],
                            "properties": {
                                "id": {"type": "string"},
                                "name": {"type": "string"},
                                "language": _NULLABLE_STRING,
                                "identities": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "kind": {"type": "string"},
                                            "value": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                        "messages": {"type": "array", "items": _ref("Message")},
                        "events": {"type": "array", "items": _ref("Event")},
                    },
                },
            ]
        },
        "LeadPage": {
            "type": "object",
            "required": ["items", "next_cursor"],
            "properties": {
                "items": {"type": "array", "items": _ref("Lead")},
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "Pass as `cursor` for the next page",
                },
            },
        },
        "Message": message,
        "Event": {
            "type": "object",
            "required": ["id", "type", "at"],
            "properties": {
                "id": {"type": ["integer", "string", "null"]},
                "type": {"type": "string"},
                "at": {"type": "string", "format": "date-time"},
                "lead": {"type": ["integer", "null"]},
                "data": {"type": "object"},
            },
        },
        "InboxItem": inbox_item,
        "InboxRetry": {
            "allOf": [_ref("InboxItem"), {"type": "object", "properties": {"lead": _NULLABLE_STRING}}]
        },
        "LeadCreate": {
            "type": "object",
            "description": "A lead from another system; at least one of email, phone, telegram",
            "allOf": [
                {"oneOf": [{"required": ["message"]}, {"required": ["text"]}]},
                {"anyOf": _CONTACT_REQUIRED},
            ],
            "properties": {
                **_SUBMISSION_PROPERTIES,
                "text": {
                    "type": "string",
                    "description": "Alias of message; give one of the two (both: 422 naming both)",
                },
                "kind": {"type": "string", "enum": [k.value for k in LeadKind], "default": "message"},
                "form": {
                    "type": "string",
                    "maxLength": 40,
                    "default": "api",
                    "description": "A configured form (`forms.<id>`: its kind applies unless `kind` is "
                    "given, and its team), a form name a routing rule matches on, or `api`; anything "
                    "else: 422 `unknown_form` with the accepted names in `forms`",
                },
                "language": {"type": "string", "description": "uk or en (ru falls back to uk)"},
                "external_id": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 200,
                    "description": "Idempotency key (or the Idempotency-Key header); reused with other "
                    "fields: 422 `idempotency_key_reused`",
                },
            },
        },
        "FormSubmission": {
            "type": "object",
            "description": "A form post; at least one of email, phone, telegram. `website` is a honeypot.",
            "required": ["message"],
            "anyOf": _CONTACT_REQUIRED,
            "properties": {
                **_SUBMISSION_PROPERTIES,
                "lang": {"type": "string"},
                "_token": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
            },
        },
        "FormAccepted": {
            "type": "object",
            "required": ["lead", "kind", "first_response_due"],
            "properties": {
                "lead": {"type": "string", "pattern": "^L-[0-9]+$"},
                "kind": {"type": "string", "enum": [k.value for k in LeadKind]},
                "first_response_due": _NULLABLE_TIME,
            },
        },
        "Kpi": {
            "type": "object",
            "properties": {
                **{
                    name: {"type": "integer"}
                    for name in ("received", "responded", "within_target", "breached", "resolved")
                },
                **{
                    name: {"type": ["number", "null"]}
                    for name in (
                        "first_response_mean_s",
                        "first_response_median_s",
                        "first_response_p90_s",
                        "resolution_mean_s",
                        "resolution_median_s",
                        "sla_compliance_pct",
                        "within_target_pct",
                    )
                },
            },
        },
        "KpiReport": {
            "type": "object",
            "required": ["from", "to", "filters", "summary", "by", "daily"],
            "properties": {
                "from": {"type": "string", "format": "date-time"},
                "to": {"type": "string", "format": "date-time"},
                "filters": {"type": "object", "additionalProperties": {"type": "string"}},
                "summary": _ref("Kpi"),
                "by": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "array",
                        "items": {
                            "allOf": [
                                _ref("Kpi"),
                                {"type": "object", "properties": {"key": _NULLABLE_STRING}},
                            ]
                        },
                    },
                },
                "daily": {
                    "type": "array",
                    "items": {
                        "allOf": [_ref("Kpi"), {"type": "object", "properties": {"day": {"type": "string"}}}]
                    },
                },
                "percentiles": {
                    "type": "object",
                    "description": "Medians/p90s of periods over 100k leads come from histograms, "
                    "within max_relative_error of the exact figure (or max_absolute_error_s under 1 s).",
                    "properties": {
                        "approximate": {"type": "boolean"},
                        "max_relative_error": {"type": "number"},
                        "max_absolute_error_s": {"type": "number"},
                    },
                },
                "compare": {
                    "type": "object",
                    "properties": {
                        "from": {"type": "string", "format": "date-time"},
                        "to": {"type": "string", "format": "date-time"},
                        "summary": _ref("Kpi"),
                        "change": {"type": "array", "items": {"type": "object"}},
                    },
                },
            },
        },
        "TextBody": {
            "type": "object",
            "required": ["text", "author"],
            "properties": {
                "text": {"type": "string", "minLength": 1, "maxLength": 20_000},
                "author": {"type": "string", "minLength": 1, "maxLength": 200},
            },
        },
        "AssignBody": {
            "type": "object",
            "required": ["manager"],
            "properties": {
                "manager": {"type": "string", "minLength": 1, "maxLength": 64, "description": "A manager id"},
                "by": {"type": "string", "maxLength": 200},
            },
        },
    }


def _body(schema: str, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(schema)}}}


def _or_form_page(response: dict[str, Any], description: str) -> dict[str, Any]:
    """An error response of the form: JSON for JSON clients, or the form page a browser gets."""
    content = {**response["content"], "text/html": {"schema": {"type": "string"}}}
    return {**response, "description": description, "content": content}


def _paths() -> dict[str, Any]:
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    lead_ok = _json(_ref("Lead"), "The lead after the change")
    form_errors = _errors(400, 404, 413, 415, 422, 429, 503)
    return {
        f"{PREFIX}/leads": {
            "post": {
                "operationId": "createLead",
                "summary": "Submit a lead (from a website backend or another CRM)",
                "security": secured,
                "parameters": [_IDEMPOTENCY_KEY],
                "requestBody": _body("LeadCreate"),
                "responses": {
                    "201": _json(_ref("Lead"), "Created"),
                    "200": _json(_ref("Lead"), "Already submitted with this key: the first result"),
                    "202": _json(_ref("Error"), "Stored, but quarantined for staff"),
                    **_errors(400, 401, 413, 415, 422, 503),
                    "422": _json(
                        _ref("ValidationError"),
                        "Validation failed (`fields` names each bad field; both `text` and `message`: "
                        "both named), a `form` that is not accepted (`unknown_form`, the accepted "
                        "names in `forms`), or the Idempotency-Key or external_id was used before for "
                        "a different lead (`idempotency_key_reused`)",
                    ),
                },
            },
            "get": {
                "operationId": "listLeads",
                "summary": "Leads, newest first, cursor-paginated",
                "security": secured,
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {
                            "type": "array",
                            "items": {"type": "string", "enum": [s.value for s in LeadStatus]},
                        },
                        "style": "form",
                        "explode": True,
                    },
                    {
                        "name": "kind",
                        "in": "query",
                        "schema": {"type": "string", "enum": [k.value for k in LeadKind]},
                    },
                    {
                        "name": "assignee",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "A manager id, or `none` for unassigned leads",
                    },
                    {"name": "team", "in": "query", "schema": {"type": "string"}},
                    {"name": "channel", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "breached",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["true", "false", "1", "0"]},
                    },
                    {"name": "q", "in": "query", "schema": {"type": "string"}, "description": "Text search"},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                    },
                ],
                "responses": {"200": _json(_ref("LeadPage"), "One page of leads"), **_errors(401, 422, 503)},
            },
        },
        f"{PREFIX}/leads/{{number}}": {
            "get": {
                "operationId": "getLead",
                "summary": "A lead with its contact, messages and events",
                "security": secured,
                "parameters": [_LEAD_NUMBER],
                "responses": {"200": _json(_ref("LeadDetail"), "The lead"), **_errors(401, 404, 503)},
            }
        },
        f"{PREFIX}/leads/{{number}}/replies": {
            "post": {
                "operationId": "replyToLead",
                "summary": "A public reply, delivered on the lead's channel",
                "security": secured,
                "parameters": [_LEAD_NUMBER, _REPLY_IDEMPOTENCY_KEY],
                "requestBody": _body("TextBody"),
                "responses": {
                    "201": _json(_ref("Message"), "Recorded and queued for delivery"),
                    "200": _json(
                        _ref("Message"), "Already recorded with this key on this lead: the first reply"
                    ),
                    **_errors(400, 401, 404, 409, 413, 415, 422, 503),
                    "409": _json(
                        _ref("Error"),
                        "`contact_erased`: the lead's contact was erased, so there is nobody to deliver "
                        "a reply to; nothing is recorded",
                    ),
                },
            }
        },
        f"{PREFIX}/leads/{{number}}/notes": {
            "post": {
                "operationId": "addNote",
                "summary": "An internal note (never sent to the customer)",
                "security": secured,
                "parameters": [_LEAD_NUMBER],
                "requestBody": _body("TextBody"),
                "responses": {
                    "201": _json(_ref("Message"), "Recorded"),
                    **_errors(400, 401, 404, 409, 413, 415, 422, 503),
                },
            }
        },
        f"{PREFIX}/leads/{{number}}/assign": {
            "post": {
                "operationId": "assignLead",
                "summary": "Give the lead to a manager",
                "security": secured,
                "parameters": [_LEAD_NUMBER],
                "requestBody": _body("AssignBody"),
                "responses": {"200": lead_ok, **_errors(400, 401, 404, 409, 413, 415, 422, 503)},
            }
        },
        f"{PREFIX}/leads/{{number}}/resolve": {
            "post": {
                "operationId": "resolveLead",
                "summary": "Mark the lead resolved",
                "security": secured,
                "parameters": [_LEAD_NUMBER],
                "responses": {"200": lead_ok, **_errors(401, 404, 409, 503)},
            }
        },
        f"{PREFIX}/leads/{{number}}/reopen": {
            "post": {
                "operationId": "reopenLead",
                "summary": "Open a resolved or closed lead again",
                "security": secured,
                "parameters": [_LEAD_NUMBER],
                "responses": {"200": lead_ok, **_errors(401, 404, 409, 503)},
            }
        },
        f"{PREFIX}/inbox": {
            "get": {
                "operationId": "listInbox",
                "summary": "Raw inputs by state (quarantine for staff)",
                "security": secured,
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {
                            "type": "string",
                            "enum": ["pending", "done", "quarantined"],
                            "default": "quarantined",
                        },
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 200},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                        "description": "`next_cursor` of the previous page",
                    },
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["items", "next_cursor"],
                            "properties": {
                                "items": {"type": "array", "items": _ref("InboxItem")},
                                "next_cursor": _NULLABLE_STRING,
                            },
                        },
                        "One page of items, newest first; `next_cursor` is null on the last page",
                    ),
                    **_errors(401, 422, 503),
                },
            }
        },
        f"{PREFIX}/inbox/{{item_id}}/retry": {
            "post": {
                "operationId": "retryInboxItem",
                "summary": "Process a quarantined input again",
                "security": secured,
                "parameters": [
                    {
                        "name": "item_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                    }
                ],
                "responses": {
                    "200": _json(_ref("InboxRetry"), "The item after the retry"),
                    **_errors(401, 404, 409, 503),
                },
            }
        },
        f"{PREFIX}/reports/kpi": {
            "get": {
                "operationId": "kpiReport",
                "summary": "KPIs for a period: summary, breakdowns, daily figures, optional comparison",
                "security": secured,
                "parameters": [
                    *(
                        {
                            "name": name,
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": "A local date (2026-11-01; an end date is inclusive) or an ISO "
                            "timestamp, from 0001-01-03 to 9999-12-29 (UTC)",
                        }
                        for name in ("from", "to", "compare_from", "compare_to")
                    ),
                    {
                        "name": "compare",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["previous", "1", "on"]},
                    },
                    {"name": "team", "in": "query", "schema": {"type": "string"}},
                    {"name": "assignee", "in": "query", "schema": {"type": "string"}},
                    {"name": "channel", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "kind",
                        "in": "query",
                        "schema": {"type": "string", "enum": [k.value for k in LeadKind]},
                    },
                ],
                "responses": {"200": _json(_ref("KpiReport"), "The report"), **_errors(401, 422, 503)},
            }
        },
        OPENAPI_PATH: {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "The OpenAPI 3.1 document")},
            }
        },
        "/forms/{form_id}": {
            "post": {
                "operationId": "submitForm",
                "summary": "A public web form (JSON from a site's script, or a browser's form post)",
                "security": [],
                "parameters": [
                    {
                        "name": "form_id",
                        "in": "path",
                        "required": True,
                        "description": "A form configured under `forms:` (e.g. contact, service)",
                        "schema": {"type": "string", "pattern": "^[a-z0-9_-]{1,40}$"},
                    },
                    _IDEMPOTENCY_KEY,
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": _ref("FormSubmission")},
                        "application/x-www-form-urlencoded": {"schema": _ref("FormSubmission")},
                    },
                },
                "responses": {
                    "201": {
                        "description": "Created: JSON for JSON clients, the thank-you page for browsers",
                        "content": {
                            "application/json": {"schema": _ref("FormAccepted")},
                            "text/html": {"schema": {"type": "string"}},
                        },
                    },
                    "200": {
                        "description": "Already submitted with this key: the first result (the thank-you "
                        "page again for browsers)",
                        "content": {
                            "application/json": {"schema": _ref("FormAccepted")},
                            "text/html": {"schema": {"type": "string"}},
                        },
                    },
                    "202": _json(_ref("Error"), "Stored, but quarantined for staff"),
                    **form_errors,
                    "400": _or_form_page(
                        form_errors["400"],
                        "The body is not readable (not JSON, not UTF-8, a malformed form, too many "
                        "fields): JSON; the honeypot field is filled: JSON for JSON clients, the form "
                        "again for browsers",
                    ),
                    "422": _or_form_page(
                        form_errors["422"],
                        "Validation failed, a bad Idempotency-Key or `_token`, or one used before for "
                        "other fields (`idempotency_key_reused`): JSON for JSON clients, the form "
                        "again for browsers",
                    ),
                    "429": _or_form_page(
                        form_errors["429"],
                        "Too many submissions from this address; see Retry-After. JSON for JSON "
                        "clients, the form again for browsers",
                    ),
                },
            }
        },
    }


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document as plain data."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Inbound-request hub API",
            "version": "1",
            "description": (
                "Leads from email, web forms and Telegram. Every /api/v1 call but this document needs "
                "`Authorization: Bearer <HUB_API_TOKEN>`. Errors are JSON: "
                '`{"error": code, "detail": text}` (422 adds `fields`). A method a path does not '
                "serve gets 405 with an `Allow` header naming the ones it does."
            ),
        },
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _schemas(),
        },
        "security": [{"bearer": []}],
        "paths": _paths(),
    }


@cache
def _document_bytes() -> bytes:
    return json.dumps(openapi_document(), ensure_ascii=False).encode("utf-8")


async def serve_openapi(request: web.Request) -> web.Response:
    """GET /api/v1/openapi.json (no auth)."""
    return web.Response(body=_document_bytes(), content_type="application/json", charset="utf-8")


def setup_openapi(app: web.Application) -> None:
    """Register the document's route."""
    app.router.add_get(OPENAPI_PATH, serve_openapi)
