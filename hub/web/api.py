"""REST API under /api/v1 (bearer token from HUB_API_TOKEN). Errors: {"error", "detail"}."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import MultiDict

from channels import webform
from hub import i18n
from hub.config import Settings
from hub.domain import LeadKind, LeadStatus, parse_lead_number
from hub.errors import IdempotencyKeyReused, ValidationFailed
from hub.web.idempotency import idempotency_key
from hub.web.keys import HUB_KEY
from hub.web.ratelimit import client_ip
from hub.web.serialize import contact_json, event_json, inbox_json, lead_json, message_json
from storage.base import LeadQuery

if TYPE_CHECKING:
    from hub.app import Hub

PREFIX = "/api/v1"
MAX_PAGE = 200
#: The `form` of an API lead that names none.
API_FORM = "api"


def api_forms(settings: Settings) -> list[str]:
    """What `POST /leads` takes as `form`: a configured form (its kind and team apply), a name a
    routing rule matches on, or `api` (the default)."""
    named: set[str] = set()
    for rule in settings.routing.rules:
        match = rule.match.form
        named.update([match] if isinstance(match, str) else match or [])
    return [*settings.forms, *sorted(named - set(settings.forms) - {API_FORM}), API_FORM]


def error(status: int, code: str, detail: str, **extra: Any) -> web.Response:
    """A JSON error response in the API's one error shape."""
    return web.json_response({"error": code, "detail": detail, **extra}, status=status)


@web.middleware
async def require_token(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every /api/v1 call (but the OpenAPI document) needs `Authorization: Bearer <HUB_API_TOKEN>`."""
    if not request.path.startswith(PREFIX) or request.path == f"{PREFIX}/openapi.json":
        response: web.StreamResponse = await handler(request)
        return response
    hub: Hub = request.app[HUB_KEY]
    configured = hub.settings.api.token
    if configured is None:
        return error(401, "unauthorized", "the API is disabled: set HUB_API_TOKEN to enable it")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), configured.get_secret_value().encode()
    ):
        return web.json_response(
            {"error": "unauthorized", "detail": "missing or wrong bearer token"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="hub"'},
        )
    response = await handler(request)
    return response


async def _json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object: 415 for another Content-Type, 400 when it cannot be read as one."""
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="send a JSON object with Content-Type: application/json")
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise web.HTTPBadRequest(text=f"the body is not valid JSON in UTF-8: {exc}") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object ({...}), not another JSON value")
    return body


def _str_field(body: dict[str, Any], name: str, required: bool = True, max_len: int = 200) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise ValidationFailed(f"{name} is required", {name: "must be a non-empty string"})
    if not _is_text(value):
        raise ValidationFailed(f"{name} is not text", {name: "must be text, without lone UTF-16 surrogates"})
    if len(value) > max_len:
        raise ValidationFailed(f"{name} is too long", {name: f"at most {max_len} characters"})
    return value.strip()


def _small_int(text: str) -> int | None:
    """ASCII digits that fit a 63-bit database integer, else None (int() would take "١٢" too)."""
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        return None
    return int(text)


def _is_text(value: str) -> bool:
    """False for strings with lone surrogates (valid JSON escapes, but not storable text)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _lead_number(request: web.Request) -> int:
    number = parse_lead_number(request.match_info["number"])
    if number is None:
        raise web.HTTPNotFound(text="lead numbers look like L-1042")
    return number


async def create_lead(request: web.Request) -> web.Response:
    """POST /api/v1/leads: a website backend or another CRM submits a lead."""
    hub: Hub = request.app[HUB_KEY]
    body = await _json_object(request)
    if "text" in body and "message" in body:
        # One would be dropped without a word: say which two came, let the client pick one.
        both = "give the lead's text as either text or message, not both"
        raise ValidationFailed(both, {"text": both, "message": both})
    if "text" in body:
        body["message"] = body.pop("text")
    form_id = body.get("form") or API_FORM
    if not isinstance(form_id, str) or len(form_id) > 40 or not _is_text(form_id):
        raise ValidationFailed("bad form", {"form": "a string of at most 40 characters"})
    known = api_forms(hub.settings)
    if form_id not in known:
        return error(
            422,
            "unknown_form",
            f"form {form_id!r} is not configured; use one of: {', '.join(known)} (or leave form out)",
            forms=known,
        )
    form = hub.settings.forms.get(form_id)
    # A configured form's kind unless the client names one; its team always.
    default_kind = form.kind if form is not None else LeadKind.MESSAGE
    kind_raw = body.get("kind", default_kind.value)
    try:
        kind = LeadKind(kind_raw) if isinstance(kind_raw, str) else None
    except ValueError:
        kind = None
    if kind is None:
        raise ValidationFailed("bad kind", {"kind": f"one of: {', '.join(k.value for k in LeadKind)}"})
    language = i18n.pick_language(body.get("language") if isinstance(body.get("language"), str) else "en")
    submission, errors = webform.validate_submission(body, language)
    if submission is None:
        raise ValidationFailed("the lead has invalid fields", errors)
    # The header has the documented pattern; a client's own external_id is freer (a CRM's id).
    key = idempotency_key(request) or body.get("external_id")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 200 or not _is_text(key)):
        raise ValidationFailed("bad idempotency key", {"external_id": "a string of 1-200 characters"})
    ip = client_ip(request, hub.settings.web.trusted_proxies)
    try:
        team = form.team if form is not None else None
        result = await webform.submit(hub, "api", form_id, kind, submission, key, language, ip, team=team)
    except IdempotencyKeyReused:
        return error(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key (or external_id) was already used for a different lead; use a new "
            "key, or repeat the same fields to retry",
        )
    if result is None:
        return error(
            202,
            "not_processed",
            "stored, but it could not be processed; it is quarantined for staff",
        )
    payload = lead_json(result.lead)
    return web.json_response(payload, status=200 if result.duplicate else 201)


async def list_leads(request: web.Request) -> web.Response:
    """GET /api/v1/leads: filters status, kind, assignee, team, channel, breached, q; cursor pages."""
    hub: Hub = request.app[HUB_KEY]
    # An empty parameter (`?team=`, what a form or a query builder sends for "any") is no
    # filter: matching the empty string found nothing, for some filters, and was 422 for others.
    q = MultiDict((key, value) for key, value in request.query.items() if value.strip())
    try:
        statuses = tuple(LeadStatus(s) for s in q.getall("status", [])) or None
        kind = LeadKind(q["kind"]) if "kind" in q else None
        raw_limit = q.get("limit", "50")
        if not (raw_limit.isascii() and raw_limit.lstrip("-").isdigit()):
            raise ValueError(f"limit must be a whole number, not {raw_limit[:20]!r}")
        limit = min(int(raw_limit), MAX_PAGE)
    except ValueError as exc:
        raise ValidationFailed(f"bad filter: {exc}") from exc
    if limit < 1:
        raise ValidationFailed("bad filter: limit must be 1 or more")
    breached = None
    if "breached" in q:
        if q["breached"] not in ("true", "false", "1", "0"):
            raise ValidationFailed("bad filter: breached must be true or false")
        breached = q["breached"] in ("true", "1")
    assignee = q.get("assignee")
    cursor = q.get("cursor")
    if cursor is not None and _small_int(cursor) is None:
        raise ValidationFailed("bad cursor: use the next_cursor of the previous page")
    query = LeadQuery(
        statuses=statuses,
        kind=kind,
        assignee=None if assignee in (None, "none") else assignee,
        unassigned=assignee == "none",
        team=q.get("team"),
        channel=q.get("channel"),
        breached=breached,
        text=q.get("q") or None,
    )
    page = await hub.store.list_leads(query, limit, cursor)
    return web.json_response(
        {"items": [lead_json(lead) for lead in page.items], "next_cursor": page.next_cursor}
    )


async def get_lead(request: web.Request) -> web.Response:
    """GET /api/v1/leads/{number}: the lead with its contact, messages and events."""
    hub: Hub = request.app[HUB_KEY]
    number = _lead_number(request)
    lead = await hub.store.get_lead(number)
    if lead is None:
        return error(404, "not_found", f"lead L-{number} does not exist")
    contact = await hub.store.get_contact(lead.contact_id)
    messages = await hub.store.list_messages(number)
    events = await hub.store.list_events(lead_number=number)
    payload = lead_json(lead)
    payload["contact"] = contact_json(contact) if contact else None
    payload["messages"] = [message_json(m) for m in messages]
    payload["events"] = [event_json(e) for e in events]
    return web.json_response(payload)


async def post_reply(request: web.Request) -> web.Response:
    """POST /api/v1/leads/{number}/replies {"text", "author"}: a public reply (200 for a retry of a keyed one)."""
    hub: Hub = request.app[HUB_KEY]
    number = _lead_number(request)
    key = idempotency_key(request)
    body = await _json_object(request)
    text = _str_field(body, "text", max_len=20_000)
    author = _str_field(body, "author")
    if key is None:
        message = await hub.replies.record_reply(number, text, author, source="api")
        return web.json_response(message_json(message), status=201)
    message, repeated = await hub.replies.record_keyed_reply(number, text, author, source="api", key=key)
    return web.json_response(message_json(message), status=200 if repeated else 201)


async def post_note(request: web.Request) -> web.Response:
    """POST /api/v1/leads/{number}/notes {"text", "author"}: an internal note."""
    hub: Hub = request.app[HUB_KEY]
    number = _lead_number(request)
    body = await _json_object(request)
    message = await hub.replies.add_note(
        number, _str_field(body, "text", max_len=20_000), _str_field(body, "author")
    )
    return web.json_response(message_json(message), status=201)


async def post_assign(request: web.Request) -> web.Response:
    """POST /api/v1/leads/{number}/assign {"manager"}."""
    hub: Hub = request.app[HUB_KEY]
    number = _lead_number(request)
    body = await _json_object(request)
    manager = _str_field(body, "manager", max_len=64)
    by = _str_field(body, "by", required=False) or "api"
    lead = await hub.actions.assign(number, manager, by=by)
    return web.json_response(lead_json(lead))


async def post_resolve(request: web.Request) -> web.Response:
    """POST /api/v1/leads/{number}/resolve."""
    hub: Hub = request.app[HUB_KEY]
    lead = await hub.actions.resolve(_lead_number(request), by="api")
    return web.json_response(lead_json(lead))


async def post_reopen(request: web.Request) -> web.Response:
    """POST /api/v1/leads/{number}/reopen."""
    hub: Hub = request.app[HUB_KEY]
    lead = await hub.actions.reopen(_lead_number(request), by="api")
    return web.json_response(lead_json(lead))


async def list_inbox(request: web.Request) -> web.Response:
    """GET /api/v1/inbox?status=quarantined: raw inputs by state (quarantine for staff)."""
    hub: Hub = request.app[HUB_KEY]
    status = request.query.get("status") or "quarantined"
    if status not in ("pending", "done", "quarantined"):
        raise ValidationFailed("bad status: pending, done or quarantined")
    raw_limit = request.query.get("limit") or str(MAX_PAGE)
    limit = _small_int(raw_limit)
    if limit is None or limit < 1:
        raise ValidationFailed("bad limit: a whole number from 1", {"limit": f"1-{MAX_PAGE}"})
    limit = min(limit, MAX_PAGE)
    raw_cursor = request.query.get("cursor") or None
    cursor = _small_int(raw_cursor) if raw_cursor is not None else None
    if raw_cursor is not None and cursor is None:
        raise ValidationFailed("bad cursor: use the next_cursor of the previous page", {"cursor": "a number"})
    items = await hub.store.inbox_list(status, limit=limit, before_id=cursor)
    # Past 200 items (a quarantine after an outage) the older ones could not be listed, nor
    # their ids found to retry them: the next page starts below the last id of this one.
    next_cursor = str(items[-1].id) if len(items) == limit else None
    return web.json_response({"items": [inbox_json(i) for i in items], "next_cursor": next_cursor})


async def retry_inbox(request: web.Request) -> web.Response:
    """POST /api/v1/inbox/{id}/retry: process a quarantined input again."""
    hub: Hub = request.app[HUB_KEY]
    item_id = _small_int(request.match_info["item_id"])
    if item_id is None:
        return error(404, "not_found", "inbox ids are numbers")
    if not await hub.store.inbox_requeue(item_id):
        # Told apart only after the requeue failed, so a retry that works costs no extra read.
        if await hub.store.inbox_get(item_id) is None:
            return error(404, "not_found", f"inbox item {item_id} does not exist")
        return error(409, "conflict", f"inbox item {item_id} is not quarantined")
    item = await hub.store.inbox_get(item_id)
    assert item is not None
    result = await hub.inbox.process(item)
    fresh = await hub.store.inbox_get(item_id)
    payload = inbox_json(fresh or item)
    payload["lead"] = result.lead.ref if result else None
    return web.json_response(payload)


def setup_api(app: web.Application) -> None:
    """Register the /api/v1 routes."""
    app.router.add_post(f"{PREFIX}/leads", create_lead)
    app.router.add_get(f"{PREFIX}/leads", list_leads)
    app.router.add_get(f"{PREFIX}/leads/{{number}}", get_lead)
    app.router.add_post(f"{PREFIX}/leads/{{number}}/replies", post_reply)
    app.router.add_post(f"{PREFIX}/leads/{{number}}/notes", post_note)
    app.router.add_post(f"{PREFIX}/leads/{{number}}/assign", post_assign)
    app.router.add_post(f"{PREFIX}/leads/{{number}}/resolve", post_resolve)
    app.router.add_post(f"{PREFIX}/leads/{{number}}/reopen", post_reopen)
    app.router.add_get(f"{PREFIX}/inbox", list_inbox)
    app.router.add_post(f"{PREFIX}/inbox/{{item_id}}/retry", retry_inbox)
