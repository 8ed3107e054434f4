"""Web forms channel: `GET/POST /forms/{form_id}` (HTML and JSON), plus the decoder that
turns a stored submission (from a form or from `POST /api/v1/leads`) into an `Inbound`.

Validation happens before anything is stored (422, field by field); a valid submission is
written raw to the inbox first, then processed; 201 means the store has it.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from hub import i18n
from hub.domain import Identity, IdentityKind, Inbound, InboxItem, LeadKind, new_id
from hub.errors import DecodeError, IdempotencyKeyReused
from hub.identities import normalize_phone, normalize_telegram_username, normalize_typed_email
from hub.web.keys import HUB_KEY
from hub.web.ratelimit import client_ip
from hub.web.templates import render

if TYPE_CHECKING:
    from hub.app import Hub
    from hub.intake import IntakeResult

log = logging.getLogger(__name__)

CHANNELS = ("webform", "api")
MAX_MESSAGE = 10_000
# A browser's form has a dozen fields; the cap bounds the work a crafted body can cause.
MAX_FORM_FIELDS = 50
FIELDS = ("name", "email", "phone", "telegram", "subject", "message")
# One-line fields may end up in mail headers: no C0/C1 controls and none of the separators
# that str.splitlines() (and so Python's email package) treats as line breaks.
_ONE_LINE = re.compile(r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$")
# Lone surrogates are valid in JSON ("\ud800") but are not text: they cannot be stored as UTF-8.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_TOKEN = re.compile(r"^[A-Za-z0-9_.:-]{8,128}$")
HONEYPOT = "website"


@dataclass(frozen=True, slots=True)
class Submission:
    """A validated submission: every field a clean string (possibly empty)."""

    name: str
    email: str
    phone: str
    telegram: str
    subject: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {f: getattr(self, f) for f in FIELDS}


def validate_submission(raw: Mapping[str, Any], language: str) -> tuple[Submission | None, dict[str, str]]:
    """Check a submission field by field; returns (submission, {}) or (None, errors)."""
    errors: dict[str, str] = {}
    values: dict[str, str] = {}
    for name in FIELDS:
        value = raw.get(name, "")
        if value is None:
            value = ""
        if not isinstance(value, str) or _SURROGATE.search(value):
            # Objects such as {"$gt": ""} never reach the store: only plain text is accepted.
            errors[name] = i18n.text("error.field_type", language)
            continue
        values[name] = value.replace("\x00", "").strip()
    if errors:
        return None, errors

    def t(key: str, **kw: Any) -> str:
        return i18n.text(key, language, **kw)

    name = values["name"]
    if len(name) > 200 or not _ONE_LINE.match(name):
        errors["name"] = t("error.name_invalid")
    subject = values["subject"]
    if len(subject) > 300 or not _ONE_LINE.match(subject):
        errors["subject"] = t("error.subject_invalid")
    message = values["message"].replace("\r\n", "\n")
    if not message:
        errors["message"] = t("error.message_required")
    elif len(message) > MAX_MESSAGE:
        errors["message"] = t("error.message_too_long", max=MAX_MESSAGE)
    email = phone = telegram = ""
    if values["email"]:
        email = normalize_typed_email(values["email"]) or ""
        if not email:
            errors["email"] = t("error.email_invalid")
    if values["phone"]:
        phone = normalize_phone(values["phone"]) or ""
        if not phone:
            errors["phone"] = t("error.phone_invalid")
    if values["telegram"]:
        telegram = normalize_telegram_username(values["telegram"]) or ""
        if not telegram:
            errors["telegram"] = t("error.telegram_invalid")
    if not (values["email"] or values["phone"] or values["telegram"]):
        errors["email"] = t("error.contact_required")
    if errors:
        return None, errors
    return Submission(name, email, phone, telegram, subject, message), {}


def decode(item: InboxItem) -> Inbound:
    """A stored form or API submission -> Inbound (the payload was validated before storing)."""
    try:
        data = json.loads(item.payload.decode("utf-8"))
        fields = data["fields"]
        submission, errors = validate_submission(fields, "en")
    except (ValueError, KeyError, TypeError) as exc:
        raise DecodeError(f"submission {item.external_id}: unreadable payload: {exc}") from exc
    if submission is None:
        raise DecodeError(f"submission {item.external_id}: invalid fields: {errors}")
    return _inbound(item, submission, data)


def _inbound(item: InboxItem, submission: Submission, data: Mapping[str, Any]) -> Inbound:
    identities: list[Identity] = []
    if submission.email:
        identities.append(Identity(IdentityKind.EMAIL, submission.email, submission.name))
    if submission.telegram:
        identities.append(Identity(IdentityKind.TELEGRAM_USERNAME, submission.telegram, submission.name))
    if submission.phone:
        identities.append(Identity(IdentityKind.PHONE, submission.phone, submission.name))
    kind = data.get("kind")
    return Inbound(
        channel=item.channel,
        external_id=item.external_id,
        sender=identities[0],
        other_identities=tuple(identities[1:]),
        subject=submission.subject,
        text=submission.message,
        received_at=item.received_at,
        kind_hint=LeadKind(kind) if kind else None,
        form_id=str(data.get("form_id", "")),
        language=str(data.get("language", "")),
        meta={"team": data.get("team"), "ip": data.get("ip", "")},
    )


def _same_submission(item: InboxItem, form_id: str, kind: LeadKind, submission: Submission) -> bool:
    """Whether a stored item holds this submission: the same validated fields, kind and form
    (not the language, the address or the bytes, which a true retry may change)."""
    try:
        data = json.loads(item.payload.decode("utf-8"))
        stored, _ = validate_submission(data["fields"], "en")
        same_form = data.get("form_id") == form_id and data.get("kind") == kind.value
    except (ValueError, KeyError, TypeError, AttributeError):
        # Not known to differ: processing the unreadable item quarantines it, as it always has.
        return True
    if stored is None:
        return True  # the same goes for stored fields that no longer validate
    return same_form and stored == submission


def stored_payload(
    form_id: str, kind: LeadKind, submission: Submission, language: str, ip: str, team: str | None
) -> dict[str, Any]:
    """What the inbox keeps of a submission (JSON), and what `decode` reads back."""
    return {
        "form_id": form_id,
        "kind": kind.value,
        "fields": submission.as_dict(),
        "language": language,
        "ip": ip,
        "team": team,
    }


async def submit(
    hub: Hub,
    channel: str,
    form_id: str,
    kind: LeadKind,
    submission: Submission,
    idempotency_key: str | None,
    language: str,
    ip: str,
    team: str | None = None,
) -> IntakeResult | None:
    """Store a validated submission raw, then turn it into a lead; None if quarantined.
    Raises IdempotencyKeyReused when the key was used before for another submission."""
    if idempotency_key is None:
        # Only unique, not secret: new_id's pooled randomness spares a getrandom() per submission.
        external_id = f"{form_id}:{new_id()}"
    elif channel == "webform":
        # Each form is an endpoint of its own (its URL), and keys are scoped to their endpoint, as
        # the Idempotency-Key draft allows: no lookup of older key forms on the hot path.
        external_id = f"{form_id}:{idempotency_key}"
    else:
        # One API endpoint takes every form: a key is unique whatever the form, so another form
        # under it meets the stored item and is refused. Items stored before carry `form:key`: a
        # retry of one is found there.
        external_id = f"key:{idempotency_key}"
        legacy = f"{form_id}:{idempotency_key}"
        if await hub.store.inbox_find(channel, legacy) is not None:
            external_id = legacy
    payload = stored_payload(form_id, kind, submission, language, ip, team)
    raw = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    # The new item's Inbound comes from the validated submission itself: reading back and
    # re-validating the bytes just written from it would find the same values (decode's test
    # holds the two to that). A replay still decodes the stored bytes.
    _, result = await hub.inbox.submit(
        channel,
        external_id,
        raw,
        {"ip": ip},
        decoder=lambda item: _inbound(item, submission, payload),
        same=lambda item: _same_submission(item, form_id, kind, submission),
    )
    return result


def due_text(hub: Hub, due: datetime | None, language: str) -> str:
    """A due time as the customer reads it: local time of the SLA calendar."""
    if due is None:
        return ""
    local = due.astimezone(ZoneInfo(hub.settings.sla.calendar.timezone))
    return local.strftime("%d.%m.%Y %H:%M") if language == "uk" else local.strftime("%Y-%m-%d %H:%M")


def _wants_json(request: web.Request) -> bool:
    return request.content_type == "application/json" or "application/json" in request.headers.get(
        "Accept", ""
    )


def _form_title(form_id: str, language: str, configured: str) -> str:
    if configured:
        return configured
    key = f"form.title.{form_id}"
    title = i18n.text(key, language)
    return title if title != key else i18n.text("form.title.default", language)


async def show_form(request: web.Request) -> web.Response:
    """GET /forms/{form_id}: the form, in the visitor's language."""
    hub: Hub = request.app[HUB_KEY]
    form_id = request.match_info["form_id"]
    form = hub.settings.forms.get(form_id)
    if form is None:
        raise web.HTTPNotFound(text=f"unknown form {form_id!r}")
    language = request.query.get("lang") or i18n.from_accept_language(request.headers.get("Accept-Language"))
    language = i18n.pick_language(language)
    return _render_form(form_id, form.title, language, {}, {}, secrets.token_urlsafe(16), 200)


def _render_form(
    form_id: str,
    title: str,
    language: str,
    values: Mapping[str, Any],
    errors: dict[str, str],
    token: str,
    status: int,
    notice: str = "",
) -> web.Response:
    html = render(
        "form.html",
        lang=language,
        t=lambda key, **kw: i18n.text(key, language, **kw),
        form_id=form_id,
        title=_form_title(form_id, language, title),
        values={k: v for k, v in values.items() if isinstance(v, str)},
        errors=errors,
        token=token,
        honeypot=HONEYPOT,
        notice=notice,
    )
    return web.Response(text=html, content_type="text/html", status=status, charset="utf-8")


def _bad_request(code: str, detail: str) -> web.HTTPBadRequest:
    """A 400 in the form's JSON error shape, for a body that cannot be read at all."""
    return web.HTTPBadRequest(
        text=json.dumps({"error": code, "detail": detail}), content_type="application/json"
    )


def _not_utf8(exc: UnicodeDecodeError) -> web.HTTPBadRequest:
    return _bad_request("invalid_form", f"the form data is not valid UTF-8: {exc}")


def _parse_urlencoded(body: bytes) -> dict[str, str]:
    """A browser's form body; invalid UTF-8 (raw or %-escaped) is a 400, not replacement characters."""
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except UnicodeDecodeError as exc:
        raise _not_utf8(exc) from exc
    except ValueError as exc:
        # Without strict_parsing, max_num_fields is parse_qsl's only other ValueError.
        raise _bad_request(
            "too_many_fields",
            f"the form has too many fields (at most {MAX_FORM_FIELDS}); send only the form's own fields",
        ) from exc
    return dict(pairs)


async def _parse_multipart(request: web.Request) -> dict[str, str]:
    """A multipart form's text fields (file parts are ignored); a malformed body is a 400."""
    try:
        posted = await request.post()
    except UnicodeDecodeError as exc:
        raise _not_utf8(exc) from exc
    except (ValueError, LookupError, RuntimeError) as exc:
        # aiohttp has no one error type for a malformed body: a missing boundary, a part
        # without a name or nested multipart are ValueErrors, an unknown charset a LookupError,
        # bad base64 a binascii.Error (a ValueError), an unknown transfer encoding a RuntimeError.
        raise _malformed_multipart(str(exc)) from exc
    except HttpProcessingError as exc:
        raise _malformed_multipart(exc.message) from exc
    return {k: v for k, v in posted.items() if isinstance(v, str)}


def _malformed_multipart(reason: str) -> web.HTTPBadRequest:
    return _bad_request(
        "invalid_form",
        f"the multipart form data is malformed ({reason}); send the fields as "
        "multipart/form-data with a boundary and a named part per field, or as JSON",
    )


async def post_form(request: web.Request) -> web.Response:
    """POST /forms/{form_id}: urlencoded (a browser) or JSON (a site's script)."""
    hub: Hub = request.app[HUB_KEY]
    form_id = request.match_info["form_id"]
    form = hub.settings.forms.get(form_id)
    if form is None:
        raise web.HTTPNotFound(text=f"unknown form {form_id!r}")
    as_json = _wants_json(request)
    ip = client_ip(request, hub.settings.web.trusted_proxies)
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "invalid_json", "detail": f"the body is not valid JSON: {exc}"}),
                content_type="application/json",
            ) from exc
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "invalid_json", "detail": "the body must be a JSON object"}),
                content_type="application/json",
            )
        raw: dict[str, Any] = body
    elif request.content_type == "application/x-www-form-urlencoded":
        raw = _parse_urlencoded(await request.read())
    elif request.content_type == "multipart/form-data":
        raw = await _parse_multipart(request)
    else:
        raise web.HTTPUnsupportedMediaType(
            text=json.dumps({"error": "unsupported_media_type", "detail": "send application/json or a form"}),
            content_type="application/json",
        )
    language = i18n.pick_language(
        str(raw.get("lang") or "") or i18n.from_accept_language(request.headers.get("Accept-Language"))
    )
    key = request.headers.get("Idempotency-Key") or raw.get("_token")
    good_key = key if isinstance(key, str) and _TOKEN.match(key) else None

    def refuse(status: int, body: dict[str, Any], notice: str, token: str | None = None) -> web.Response:
        """JSON clients get `body`; a browser gets the form again (its values kept) with `notice`."""
        if as_json:
            return web.json_response(body, status=status)
        token = token or secrets.token_urlsafe(16)
        return _render_form(form_id, form.title, language, raw, {}, token, status, notice=notice)

    limited = hub.form_limiter.hit(ip)
    if limited is not None:
        seconds = max(1, int(limited + 0.999))
        message = i18n.text("error.rate_limited", language, seconds=seconds)
        # The same token on the page: sending it again after the wait stays one submission.
        response = refuse(429, {"error": "rate_limited", "detail": message}, message, good_key)
        response.headers["Retry-After"] = str(seconds)
        return response
    if raw.get(HONEYPOT):
        log.info("form %s: honeypot filled, submission dropped", form_id)
        message = i18n.text("error.rejected", language)
        return refuse(400, {"error": "rejected", "detail": message}, message)
    if key is not None and good_key is None:
        bad_key = {
            "error": "validation_failed",
            "detail": "bad idempotency key",
            "fields": {"Idempotency-Key": "8-128 characters of A-Z a-z 0-9 _ . : -"},
        }
        return refuse(422, bad_key, i18n.text("error.form_expired", language))
    submission, errors = validate_submission(raw, language)
    if submission is None:
        if as_json:
            return web.json_response(
                {
                    "error": "validation_failed",
                    "detail": i18n.text("form.errors", language),
                    "fields": errors,
                },
                status=422,
            )
        return _render_form(
            form_id, form.title, language, raw, errors, str(key or secrets.token_urlsafe(16)), 422
        )
    try:
        result = await submit(
            hub, "webform", form_id, form.kind, submission, key, language, ip, team=form.team
        )
    except IdempotencyKeyReused:
        reused = {"error": "idempotency_key_reused", "detail": i18n.text("error.key_reused", language)}
        # A new token: the visitor changed the fields after sending them, so sending the form
        # again is a new request.
        return refuse(422, reused, i18n.text("form.resent_changed", language))
    if result is None:
        return web.json_response(
            {
                "error": "not_processed",
                "detail": "the submission was stored but could not be processed; staff will see it",
            },
            status=202,
        )
    lead = result.lead
    status = 200 if result.duplicate else 201
    due_iso = lead.first_response_due.isoformat() if lead.first_response_due else None
    if as_json:
        return web.json_response(
            {"lead": lead.ref, "kind": lead.kind.value, "first_response_due": due_iso}, status=status
        )
    html = render(
        "thanks.html",
        lang=language,
        t=lambda k, **kw: i18n.text(k, language, **kw),
        lead=lead.ref,
        due=due_text(hub, lead.first_response_due, language),
        telegram_link=hub.telegram_link(lead),
    )
    return web.Response(text=html, content_type="text/html", status=status, charset="utf-8")


def setup_web(app: web.Application) -> None:
    """Register the form routes on the hub's web application."""
    app.router.add_get("/forms/{form_id}", show_form)
    app.router.add_post("/forms/{form_id}", post_form)


class WebformChannel:
    """Forms on the hub's own web server, plus the decoder of API submissions."""

    name = "webform"

    def attach(self, hub: Hub) -> None:
        for channel in CHANNELS:
            hub.inbox.register(channel, decode)
        hub.web_setups.append(setup_web)

    async def start(self) -> None:
        """Nothing to connect: forms arrive through the hub's web server."""

    async def stop(self) -> None:
        """Nothing to disconnect."""
