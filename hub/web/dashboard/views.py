"""Dashboard pages: the queue, a lead with its actions, breaches, the team."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import nh3
from aiohttp import web
from markupsafe import Markup

from hub import i18n
from hub.attachments import is_stored_ref
from hub.config import ManagerSettings
from hub.domain import (
    ACTIVE_STATUSES,
    Contact,
    Event,
    EventType,
    Lead,
    LeadKind,
    LeadStatus,
    new_id,
    parse_lead_number,
    utcnow,
)
from hub.errors import HubError, IdempotencyKeyReused
from hub.identities import normalize_phone
from hub.refusals import REFUSALS, refusal_code
from hub.web.dashboard import files
from hub.web.dashboard.common import (
    PREFIX,
    error_page,
    hub_of,
    keep_lang,
    local_midnight,
    may_open,
    redirect,
    render_page,
    safe_next,
    sees_all,
    state_of,
    viewer_of,
    zone_of,
)
from storage.base import ContactMissing, LeadOrder, LeadQuery

log = logging.getLogger(__name__)

#: Leads per page of the queue and of each breaches table.
QUEUE_PAGE = 100
BREACHES_PAGE = 100
PAST_BREACHES_PAGE = 50
#: A page number above this in a link is not one the dashboard made (shown, never queried).
MAX_PAGE_NUMBER = 1_000_000
#: What an action's redirect may name in ?error= (`dash.error.<code>`) and ?done=
#: (`dash.done.<code>`). Only these codes are shown: free text from the URL would let anyone
#: link a manager to a page that says whatever they like in its alert box.
ERROR_CODES = REFUSALS | {"confirm", "merge_erased", "no_other_lead", "same_contact"}
DONE_CODES = frozenset({"reply", "note", "assign", "unassign", "resolve", "reopen", "merge", "spam"})
QUEUE_DONE_CODES = frozenset({"erased"})
#: The assign form's "nobody" choice (the word the queue's assignee filter uses for unassigned).
NOBODY = "none"


class ActionRefused(HubError):
    """A dashboard action refused for a reason the lead page names by `code`."""

    def __init__(self, code: str) -> None:
        super().__init__(code, code=code)


def _error_code(exc: HubError) -> str:
    """The ERROR_CODES entry that tells the manager why an action failed."""
    if isinstance(exc, ActionRefused):
        return exc.code
    if isinstance(exc, ContactMissing):
        # The contact was erased: nothing may be merged with it (a reply is refused by the core).
        return "merge_erased"
    # The core's own reasons read the same on every staff channel (hub/refusals.py).
    return refusal_code(exc)


def _known(value: str, codes: frozenset[str]) -> str:
    return value if value in codes else ""


STATUS_ORDER = [s.value for s in LeadStatus]


@dataclass(frozen=True, slots=True)
class QueueFilters:
    team: str = ""
    assignee: str = ""  # a manager id, "me" or "none"
    kind: str = ""
    channel: str = ""
    status: str = ""  # "" = every active status, "all", or one status
    q: str = ""

    @classmethod
    def from_query(cls, query: Any) -> QueueFilters:
        """Filters from query parameters, unknown values dropped."""

        def get(name: str, limit: int = 64) -> str:
            return str(query.get(name, "")).strip()[:limit]

        kind = get("kind")
        status = get("status")
        return cls(
            team=get("team"),
            assignee=get("assignee"),
            kind=kind if kind in {k.value for k in LeadKind} else "",
            channel=get("channel"),
            status=status if status in (*STATUS_ORDER, "all") else "",
            q=get("q", 200),
        )

    def as_params(self) -> dict[str, str]:
        return {k: v for k, v in vars_of(self).items() if v}


def vars_of(filters: QueueFilters) -> dict[str, str]:
    return {
        "team": filters.team,
        "assignee": filters.assignee,
        "kind": filters.kind,
        "channel": filters.channel,
        "status": filters.status,
        "q": filters.q,
    }


@dataclass(frozen=True, slots=True)
class RunningTarget:
    """The response a lead owes now: which target (first or next response), due when."""

    name: str  # first_response | next_response
    due: datetime
    warn: datetime | None
    warned: bool  # this episode's warning was claimed
    breached: bool  # this episode's breach was claimed


def running_target(lead: Lead) -> RunningTarget | None:
    """The response target on the clock of an active lead, None when no response is owed."""
    if not lead.is_active:
        return None
    if lead.sla_target and lead.sla_due is not None:
        return RunningTarget(
            lead.sla_target,
            lead.sla_due,
            lead.sla_warn_due,
            lead.sla_warned_at is not None,
            lead.sla_breached_at is not None,
        )
    # Leads from before the generalised clock got their first response as the running target
    # when their store was opened (both adapters), so the queue's order agrees with this.
    return None


@dataclass(frozen=True, slots=True)
class QueueRow:
    lead: Lead
    contact_name: str
    state: str  # ok | warned | breached | done | unanswered
    target: RunningTarget | None = None


def _row_state(lead: Lead, now: datetime) -> str:
    target = running_target(lead)
    if target is not None:
        # Owed a response (a first one, or a next one after the customer wrote again): its clock
        # decides, whether or not an earlier response was given.
        if target.breached or target.due <= now:
            return "breached"
        if target.warned or (target.warn is not None and target.warn <= now):
            return "warned"
        return "ok"
    if lead.first_response_at is not None:
        return "done"
    if not lead.is_active:
        return "unanswered"  # resolved or closed without a reply: nothing is owed, nor was it answered
    return "ok"


@dataclass(frozen=True, slots=True)
class PageAsk:
    """Which page of a listing a link asks for: the store's cursor and the page's number.

    The number only labels the page (leads move between loads); the cursor says where it starts.
    """

    cursor: str | None = None
    number: int = 1

    @classmethod
    def from_query(cls, query: Any, name: str = "page") -> PageAsk:
        cursor = str(query.get(name, "")).strip()
        if not cursor:
            return cls()
        raw_number = str(query.get(f"{name}_n", ""))
        number = (
            int(raw_number) if raw_number.isascii() and raw_number.isdigit() and len(raw_number) < 8 else 0
        )
        return cls(cursor[:100], number if 2 <= number <= MAX_PAGE_NUMBER else 2)


@dataclass(frozen=True, slots=True)
class Paged:
    """One page of leads, the links around it, and how many match in all."""

    leads: list[Lead]
    total: int
    number: int = 1
    next_cursor: str | None = None
    prev_cursor: str | None = None
    bad_link: bool = False  # the link's cursor was not one the store made: this is page 1

    def links(self, path: str, params: dict[str, str], name: str = "page") -> dict[str, str]:
        """URLs of the first, previous and next pages that exist, every other parameter kept."""
        kept = {k: v for k, v in params.items() if k not in (name, f"{name}_n")}

        def url(extra: dict[str, str]) -> str:
            query = kept | extra
            return f"{path}?{urlencode(query)}" if query else path

        found: dict[str, str] = {}
        if self.prev_cursor is not None or self.number > 1:
            # Also from a page left empty (its leads went away meanwhile): it has no "previous".
            found["first"] = url({})
        if self.prev_cursor is not None:
            found["prev"] = url({name: self.prev_cursor, f"{name}_n": str(max(self.number - 1, 2))})
        if self.next_cursor is not None:
            found["next"] = url({name: self.next_cursor, f"{name}_n": str(self.number + 1)})
        return found


async def _read_page(request: web.Request, query: LeadQuery, size: int, ask: PageAsk) -> Paged:
    """A page of `query` from the store; a cursor it refuses falls back to the first page."""
    hub = hub_of(request)
    bad = False
    try:
        page = await hub.store.list_leads(query, size, ask.cursor)
    except ValueError as exc:
        if ask.cursor is None:
            raise
        log.info("dashboard: page link %r refused, showing the first page: %s", ask.cursor[:40], exc)
        page = await hub.store.list_leads(query, size)
        bad = True
    # A page with nothing before it is the first; an empty one after a cursor is not.
    first = bad or ask.cursor is None or (page.prev_cursor is None and bool(page.items))
    number = 1 if first else ask.number
    return Paged(
        leads=page.items,
        total=await hub.store.count_leads(query),
        number=number,
        next_cursor=page.next_cursor,
        prev_cursor=page.prev_cursor,
        bad_link=bad,
    )


async def _queue_leads(request: web.Request, filters: QueueFilters, ask: PageAsk) -> Paged:
    """A page of the queue (QUEUE_PAGE leads in due order), and how many match in all."""
    hub = hub_of(request)
    viewer = viewer_of(request)
    number = parse_lead_number(filters.q) if filters.q else None
    by_number: list[Lead] = []
    if number is not None:
        lead = await hub.store.get_lead(number)
        by_number = [lead] if lead is not None and may_open(viewer, lead) else []
        digits = filters.q.strip()
        # Seven digits or more may as well be a phone number (0671112233): search for it too.
        if not (digits.isdigit() and len(digits) >= 7):
            return Paged(by_number, len(by_number))
    if filters.status == "all":
        statuses: tuple[LeadStatus, ...] | None = None
    elif filters.status:
        statuses = (LeadStatus(filters.status),)
    else:
        statuses = tuple(sorted(ACTIVE_STATUSES))
    query = LeadQuery(
        statuses=statuses,
        kind=LeadKind(filters.kind) if filters.kind else None,
        team=filters.team or None,
        channel=filters.channel or None,
        text=_search_text(filters.q) or None,
        # The store orders by due time before it cuts the page: the most urgent leads come
        # first, and the next page starts where this one ended however leads change meanwhile.
        order="due",
    )
    assignee = viewer.id if filters.assignee == "me" else filters.assignee
    if assignee == "none":
        query = _with(query, unassigned=True)
    elif assignee:
        query = _with(query, assignee=assignee)
    if not sees_all(viewer):
        # An agent's queue: own leads plus the unassigned ones, whatever the filters say.
        if assignee and assignee not in {viewer.id, "none"}:
            return Paged([], 0)
        if not assignee:
            query = _with(query, assignee=viewer.id, or_unassigned=True)
    paged = await _read_page(request, query, QUEUE_PAGE, ask)
    if paged.number > 1 or not by_number:
        return paged
    # The lead whose number was typed heads the first page (it may not match the filters).
    extra = [lead for lead in by_number if lead.number not in {found.number for found in paged.leads}]
    return replace(paged, leads=extra + paged.leads, total=paged.total + len(extra))


#: What people type in a phone number besides digits: "+38 (067) 123-45-67".
_PHONE_TYPED = re.compile(r"\+?[\d\s().-]+")


def _search_text(q: str) -> str:
    """The text to search for: a phone number typed with spaces, brackets or dashes is searched
    as it is stored (E.164, `+380671234567`), or by its digits when it is only a part of one
    ("123 45 67"); anything else as typed."""
    if not _PHONE_TYPED.fullmatch(q) or q.isdigit() or sum(c.isdigit() for c in q) < 7:
        return q
    return normalize_phone(q) or "".join(c for c in q if c.isdigit())


def _with(query: LeadQuery, **changes: Any) -> LeadQuery:
    fields = {name: getattr(query, name) for name in query.__dataclass_fields__}
    fields.update(changes)
    return LeadQuery(**fields)


async def _rows(request: web.Request, filters: QueueFilters, ask: PageAsk) -> tuple[list[QueueRow], Paged]:
    hub = hub_of(request)
    now = utcnow()
    paged = await _queue_leads(request, filters, ask)
    names: dict[str, str] = {}
    rows = []
    for lead in paged.leads:
        if lead.contact_id not in names:
            contact = await hub.store.get_contact(lead.contact_id)
            names[lead.contact_id] = contact.name if contact else ""
        rows.append(QueueRow(lead, names[lead.contact_id], _row_state(lead, now), running_target(lead)))
    return rows, paged


def _kept_params(request: web.Request, params: dict[str, str]) -> dict[str, str]:
    """`params` plus the page's ?lang=: links and the live refresh keep the page's language,
    not the cookie's or the browser's."""
    if request.query.get("lang") in i18n.SUPPORTED:
        return params | {"lang": request.query["lang"]}
    return params


def _asked_params(ask: PageAsk, paged: Paged, name: str = "page") -> dict[str, str]:
    """The parameters that read this page again (none for the first page)."""
    if ask.cursor is None or paged.bad_link:
        return {}
    return {name: ask.cursor, f"{name}_n": str(ask.number)}


def _queue_context(request: web.Request, filters: QueueFilters) -> dict[str, Any]:
    hub = hub_of(request)
    channels = sorted({"webform", "email", "telegram", "api", *(c.name for c in hub.channels)})
    return {
        "filters": filters,
        "teams": sorted(hub.settings.teams),
        "managers": hub.settings.managers,
        "kinds": [k.value for k in LeadKind],
        "channels": channels,
        "statuses": STATUS_ORDER,
        "now_iso": utcnow().isoformat(),
    }


async def queue(request: web.Request) -> web.Response:
    """GET /dashboard: open leads, soonest breach first, a page at a time, updated live."""
    filters = QueueFilters.from_query(request.query)
    ask = PageAsk.from_query(request.query)
    rows, paged = await _rows(request, filters, ask)
    params = _kept_params(request, filters.as_params())
    # The live refresh re-reads this very page (its cursor kept), so a new lead shows on the
    # page it belongs to and page 2 stays page 2.
    rows_url = f"{PREFIX}/queue/rows?{urlencode(params | _asked_params(ask, paged))}"
    return render_page(
        request,
        "dashboard/queue.html",
        notice=_known(request.query.get("done", ""), QUEUE_DONE_CODES),
        rows=rows,
        paged=paged,
        links=paged.links(PREFIX, params),
        rows_url=rows_url,
        **_queue_context(request, filters),
    )


async def queue_rows(request: web.Request) -> web.Response:
    """GET /dashboard/queue/rows: the queue's table body (the page re-fetches it on live events)."""
    filters = QueueFilters.from_query(request.query)
    rows, paged = await _rows(request, filters, PageAsk.from_query(request.query))
    links = paged.links(PREFIX, _kept_params(request, filters.as_params()))
    return render_page(request, "dashboard/queue_rows.html", rows=rows, paged=paged, links=links)


async def events(request: web.Request) -> web.StreamResponse:
    """GET /dashboard/events: server-sent events about leads this viewer may see."""
    viewer = viewer_of(request)
    return await state_of(request).broker.stream(request, viewer.id, sees_all(viewer))


# --- the lead page -----------------------------------------------------------------------------


def sanitize_html(html: str) -> Markup:
    """Customer HTML reduced to safe formatting (no scripts, styles, forms or remote images)."""
    cleaned = nh3.clean(
        html,
        tags={
            "a", "b", "blockquote", "br", "code", "div", "em", "i", "li", "ol", "p", "pre",
            "span", "strong", "table", "tbody", "td", "th", "thead", "tr", "u", "ul",
        },
        attributes={"a": {"href", "title"}},
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )  # fmt: skip
    return Markup(cleaned)  # nh3's output is safe by construction


async def _lead_for(request: web.Request) -> Lead | web.Response:
    hub = hub_of(request)
    number = parse_lead_number(request.match_info["number"])
    lead = await hub.store.get_lead(number) if number is not None else None
    if lead is None:
        return error_page(request, 404, "dash.error.no_lead")
    if not may_open(viewer_of(request), lead):
        log.warning("dashboard: %s may not open %s", viewer_of(request).id, lead.ref)
        return error_page(request, 403, "dash.error.forbidden")
    return lead


def _assignment_history(events: list[Event]) -> list[Event]:
    kinds = {EventType.LEAD_ASSIGNED.value, EventType.LEAD_UNASSIGNED.value}
    return [e for e in events if e.type in kinds]


def reason_key(reason: Any) -> str:
    """The `dash.reason.*` text that sums up a router decision log (or a manual assignment)."""
    if not isinstance(reason, dict):
        return "dash.reason.other"
    if "manual" in reason:
        return "dash.reason.manual"
    if reason.get("taken"):
        return "dash.reason.taken"
    if "nobody eligible" in str(reason.get("result", "")):
        return "dash.reason.nobody"
    chosen = [step for step in reason.get("teams", []) if isinstance(step, dict) and step.get("chosen")]
    why = str(chosen[-1].get("why", "")) if chosen else ""
    for phrase, key in (
        ("sticky:", "sticky"),
        ("round robin", "round_robin"),
        ("least loaded", "least_loaded"),
    ):
        if phrase in why:
            return f"dash.reason.{key}"
    return "dash.reason.other"


def reason_text(reason: Any) -> str:
    """A router decision log (nested dicts) as one readable line."""
    if isinstance(reason, dict):
        return "; ".join(f"{k}: {reason_text(v)}" for k, v in reason.items())
    if isinstance(reason, list):
        return ", ".join(reason_text(v) for v in reason)
    return "" if reason is None else str(reason)


async def lead_page(request: web.Request) -> web.Response:
    """GET /dashboard/leads/{number}: conversation, contact, SLA timers, history, actions."""
    found = await _lead_for(request)
    if isinstance(found, web.Response):
        return found
    lead = found
    hub = hub_of(request)
    contact = await hub.store.get_contact(lead.contact_id)
    messages = await hub.store.list_messages(lead.number)
    lead_events = await hub.store.list_events(lead_number=lead.number)
    now = utcnow()
    return render_page(
        request,
        "dashboard/lead.html",
        lead=lead,
        contact=contact,
        messages=messages,
        sanitize=sanitize_html,
        history=_assignment_history(lead_events),
        events=lead_events,
        reason_text=reason_text,
        reason_key=reason_key,
        state=_row_state(lead, now),
        target=running_target(lead),
        managers=hub.settings.managers,
        notice=_known(request.query.get("done", ""), DONE_CODES),
        error=_known(request.query.get("error", ""), ERROR_CODES),
        now_iso=now.isoformat(),
        reply_key=new_id(),
        note_key=new_id(),
        merge_offer=await _merge_offer(request, lead),
        file_url=lambda message, index: files.file_path(lead, message.id, index),
        stored=is_stored_ref,
    )


async def lead_file(request: web.Request) -> web.StreamResponse:
    """GET /dashboard/leads/{number}/messages/{message}/attachments/{index}: a stored file,
    for whoever may open the lead."""
    found = await _lead_for(request)
    if isinstance(found, web.Response):
        return found
    return await files.open_attachment(request, found)


async def lead_action(request: web.Request) -> web.Response:
    """POST /dashboard/leads/{number}/{action}: reply, note, assign, resolve, reopen, spam, merge,
    erase."""
    found = await _lead_for(request)
    if isinstance(found, web.Response):
        return found
    lead = found
    hub = hub_of(request)
    viewer = viewer_of(request)
    action = request.match_info["action"]
    form = await request.post()
    back = f"{PREFIX}/leads/{lead.ref}"

    def after(target: str, **params: str) -> web.Response:
        # Back in the language the page was in (its forms post with its ?lang=).
        return redirect(keep_lang(request, f"{target}?{urlencode(params)}"))

    try:
        if action == "reply":
            await _reply(request, lead, str(form.get("text", "")), form.get("key"), viewer)
        elif action == "note":
            # The page's key makes a double submit one note; a key the page did not make is ignored.
            key = form.get("key")
            note_key = key if isinstance(key, str) and _REPLY_KEY.fullmatch(key) else None
            await hub.replies.add_note(lead.number, str(form.get("text", "")), viewer.name, key=note_key)
        elif action == "assign" and form.get("manager") == NOBODY:
            # An agent may hand back a lead of their own, never take one from someone else.
            if not sees_all(viewer) and lead.assignee not in (None, viewer.id):
                return error_page(request, 403, "dash.error.forbidden")
            await hub.actions.unassign(lead.number, by=viewer.id)
            return after(back, done="unassign")
        elif action == "assign":
            target = str(form.get("manager", ""))
            if not sees_all(viewer) and target != viewer.id:
                return error_page(request, 403, "dash.error.forbidden")
            await hub.actions.assign(lead.number, target, by=viewer.id)
        elif action == "resolve":
            await hub.actions.resolve(lead.number, by=viewer.id)
        elif action == "reopen":
            await hub.actions.reopen(lead.number, by=viewer.id)
        elif action == "spam":
            await hub.actions.mark_spam(lead.number, by=viewer.id)
        elif action == "merge":
            if not sees_all(viewer):
                return error_page(request, 403, "dash.error.forbidden")
            other = await _merge_target(request, lead, str(form.get("other", "")))
            if form.get("confirm") != "yes":
                # Irreversible and one typo away from a stranger: show whose contact it is first
                # (scrolled to, as the contact card is far down a phone's page).
                return redirect(
                    keep_lang(request, f"{back}?{urlencode({'merge': other.ref})}") + "#merge-confirm"
                )
            await _merge(request, lead, other, viewer)
        elif action == "erase":
            if not sees_all(viewer):
                return error_page(request, 403, "dash.error.forbidden")
            if form.get("confirm") != "yes":
                return after(back, error="confirm")
            await _erase(request, lead, viewer)
            return after(PREFIX, done="erased")
        else:
            return error_page(request, 404, "dash.error.no_action")
    except HubError as exc:
        code = _error_code(exc)
        log.info("dashboard: %s on %s by %s refused (%s): %s", action, lead.ref, viewer.id, code, exc)
        return after(back, error=code)
    return after(back, done=action)


#: The key each rendering of a lead page gives its reply and note forms (`new_id()`: 32 hex digits).
_REPLY_KEY = re.compile(r"[0-9a-f]{32}")


async def _reply(request: web.Request, lead: Lead, text: str, key: Any, viewer: ManagerSettings) -> None:
    """A reply from the lead page, recorded once under the page's key: a double click on Send,
    or a resend after a dropped connection, must not reach the customer twice."""
    hub = hub_of(request)
    if isinstance(key, str) and _REPLY_KEY.fullmatch(key):
        try:
            await hub.replies.record_keyed_reply(
                lead.number, text, viewer.name, "dashboard", f"dashboard:{key}"
            )
            return
        except IdempotencyKeyReused:
            # The same page sent another text (Back, then a new reply): a reply of its own.
            log.info("%s: dashboard reply key reused for another text; recorded as a new reply", lead.ref)
    await hub.replies.record_reply(lead.number, text, viewer.name, source="dashboard")


async def _merge_target(request: web.Request, lead: Lead, other_ref: str) -> Lead:
    """The lead whose contact would be merged into `lead`'s; ActionRefused when there is none."""
    hub = hub_of(request)
    number = parse_lead_number(other_ref)
    other = await hub.store.get_lead(number) if number is not None else None
    if other is None:
        raise ActionRefused("no_other_lead")
    if other.contact_id == lead.contact_id:
        raise ActionRefused("same_contact")
    if (
        await hub.store.get_contact(lead.contact_id) is None
        or await hub.store.get_contact(other.contact_id) is None
    ):
        raise ActionRefused("merge_erased")
    return other


async def _merge_offer(request: web.Request, lead: Lead) -> tuple[Lead, Contact] | None:
    """The lead and contact a ?merge= asks to confirm, if the viewer may merge it into `lead`."""
    hub = hub_of(request)
    raw = request.query.get("merge", "")
    if not raw or not sees_all(viewer_of(request)):
        return None
    try:
        other = await _merge_target(request, lead, raw)
    except ActionRefused:
        return None
    contact = await hub.store.get_contact(other.contact_id)
    return (other, contact) if contact is not None else None


async def _merge(request: web.Request, lead: Lead, other: Lead, viewer: ManagerSettings) -> None:
    hub = hub_of(request)
    await hub.store.merge_contacts(lead.contact_id, other.contact_id)
    now = utcnow()
    event = Event(
        "contact.merged",
        now,
        lead.number,
        {"kept": lead.contact_id, "merged": other.contact_id, "via": other.ref, "by": viewer.id},
    )
    await hub.store.append_event(event)
    await hub.bus.publish(event, lead)
    log.info("%s: contact of %s merged into it by %s", lead.ref, other.ref, viewer.id)


async def _erase(request: web.Request, lead: Lead, viewer: ManagerSettings) -> None:
    await hub_of(request).erasure.erase(lead.contact_id, by=viewer.id)


# --- breaches and team -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BreachRow:
    lead: Lead
    holder: str | None
    late_seconds: float
    steps: list[Event]
    target: str = "first_response"  # the breached response target shown: first or next response
    due: datetime | None = None  # that target's due time


#: The response targets a lead's breach row is about (a resolution breach has no row of its own).
RESPONSE_TARGETS = ("first_response", "next_response")


def _event_time(value: Any) -> datetime | None:
    """A time an sla.* event recorded (ISO text), None when it is missing or not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


@dataclass(frozen=True, slots=True)
class BreachTable:
    rows: list[BreachRow]
    paged: Paged  # `rows` are its leads; `paged.total` counts every matching breach
    links: dict[str, str]


async def _breach_rows(
    request: web.Request, statuses: tuple[LeadStatus, ...], size: int, order: LeadOrder, ask: PageAsk
) -> tuple[list[BreachRow], Paged]:
    hub = hub_of(request)
    now = utcnow()
    query = LeadQuery(statuses=statuses, breached=True, order=order)
    paged = await _read_page(request, query, size, ask)
    steps_types = [
        EventType.SLA_WARNING.value,
        EventType.SLA_BREACHED.value,
        EventType.LEAD_ASSIGNED.value,
        EventType.LEAD_UNASSIGNED.value,
        EventType.REPLY_RECORDED.value,
        EventType.LEAD_RESOLVED.value,
    ]
    rows = []
    for lead in paged.leads:
        lead_events = await hub.store.list_events(lead_number=lead.number, types=steps_types, limit=200)
        # The latest response breach: a next response's after an answered first one shows as such.
        breach = next(
            (
                e
                for e in reversed(lead_events)
                if e.type == EventType.SLA_BREACHED.value
                and e.data.get("target", "first_response") in RESPONSE_TARGETS
            ),
            None,
        )
        target = str(breach.data.get("target", "first_response")) if breach else "first_response"
        holder = breach.data.get("assignee") if breach else lead.assignee
        if target == "next_response" and breach is not None:
            due = _event_time(breach.data.get("due")) or lead.sla_due or breach.at
            # Lateness stops with the reply that answered it, or the resolution.
            answer = next(
                (e.at for e in lead_events if e.type == EventType.REPLY_RECORDED.value and e.at >= breach.at),
                None,
            )
            end = answer or lead.resolved_at or now
        else:
            due = lead.first_response_due or lead.breached_at or now
            # Lateness stops with the answer, or with the resolution of a lead never answered.
            end = lead.first_response_at or lead.resolved_at or now
        late = (end - due).total_seconds()
        steps = [e for e in lead_events if breach is None or e.at >= breach.at or e.type.startswith("sla.")]
        rows.append(BreachRow(lead, holder if isinstance(holder, str) else None, late, steps, target, due))
    return rows, paged


async def breaches(request: web.Request) -> web.Response:
    """GET /dashboard/breaches: leads past a response's due time (first or next), current and past,
    each table a page at a time (?page= and ?past=, each link keeping the other table's page)."""
    if not sees_all(viewer_of(request)):
        return error_page(request, 403, "dash.error.forbidden")
    asks = {name: PageAsk.from_query(request.query, name) for name in ("page", "past")}
    # Open breaches most overdue first (the ones to act on); past ones most recent first.
    current_rows, current = await _breach_rows(
        request, tuple(sorted(ACTIVE_STATUSES)), BREACHES_PAGE, "due", asks["page"]
    )
    past_rows, past = await _breach_rows(
        request, (LeadStatus.RESOLVED, LeadStatus.CLOSED), PAST_BREACHES_PAGE, "newest", asks["past"]
    )
    path = f"{PREFIX}/breaches"
    params = _kept_params(request, {})
    current_params = _asked_params(asks["page"], current, "page")
    past_params = _asked_params(asks["past"], past, "past")
    return render_page(
        request,
        "dashboard/breaches.html",
        current=BreachTable(current_rows, current, current.links(path, params | past_params, "page")),
        past=BreachTable(past_rows, past, past.links(path, params | current_params, "past")),
        bad_link=current.bad_link or past.bad_link,
    )


@dataclass(frozen=True, slots=True)
class TeamRow:
    manager: ManagerSettings
    load: int
    away: bool
    available: bool
    handled_today: int
    hours: str


async def team(request: web.Request) -> web.Response:
    """GET /dashboard/team: each manager's load, availability, hours and today's handled count."""
    viewer = viewer_of(request)
    if not sees_all(viewer):
        return error_page(request, 403, "dash.error.forbidden")
    hub = hub_of(request)
    now = utcnow()
    managers = hub.settings.managers
    loads = await hub.store.count_active_by_assignee([m.id for m in managers])
    handled = await hub.store.handled_since(local_midnight(now, zone_of(hub)))
    rows = []
    for manager in managers:
        load = loads.get(manager.id, 0)
        reason = await hub.availability.why_not_eligible(manager, load, now)
        hours = manager.working_hours
        rows.append(
            TeamRow(
                manager=manager,
                load=load,
                away=await hub.availability.is_away(manager.id),
                available=reason is None,
                # A reply's author is a manager's id (Telegram) or name (dashboard).
                handled_today=handled.get(manager.id, 0)
                + (handled.get(manager.name, 0) if manager.name != manager.id else 0),
                hours=_hours_text(hours.hours, hours.timezone) if hours else "",
            )
        )
    return render_page(request, "dashboard/team.html", rows=rows)


def _hours_text(hours: str | dict[str, list[str]], zone: str) -> str:
    if isinstance(hours, str):
        return f"{hours} ({zone})"
    return "; ".join(f"{days} {', '.join(spans)}" for days, spans in hours.items()) + f" ({zone})"


async def set_away(request: web.Request) -> web.Response:
    """POST /dashboard/team/{manager}/away (away=1|0, optional next=page to return to): the
    manager themselves, or a lead/admin for anyone. The same path as Telegram's /away and /back,
    so the router reacts the same way (a manager who is back drains the unassigned queue)."""
    viewer = viewer_of(request)
    manager_id = request.match_info["manager"]
    hub = hub_of(request)
    # Refused before the lookup, so an agent cannot probe which manager ids exist.
    if not sees_all(viewer) and viewer.id != manager_id:
        log.warning("dashboard: %s may not change %s's availability", viewer.id, manager_id)
        return error_page(request, 403, "dash.error.forbidden")
    if hub.settings.manager(manager_id) is None:
        return error_page(request, 404, "dash.error.no_manager")
    form = await request.post()
    away = form.get("away") == "1"
    await hub.availability.set_away(manager_id, away)
    log.info("dashboard: %s marked %s %s", viewer.id, manager_id, "away" if away else "back")
    raw_next = form.get("next")
    if isinstance(raw_next, str) and raw_next:
        return redirect(safe_next(raw_next))
    return redirect(keep_lang(request, f"{PREFIX}/team" if sees_all(viewer) else PREFIX))


def setup_routes(app: web.Application) -> None:
    """Register the queue, lead, breaches and team routes."""
    router = app.router
    router.add_get(PREFIX, queue)
    router.add_get(f"{PREFIX}/", queue)
    router.add_get(f"{PREFIX}/queue/rows", queue_rows)
    router.add_get(f"{PREFIX}/events", events)
    router.add_get(f"{PREFIX}/leads/{{number}}", lead_page)
    router.add_post(f"{PREFIX}/leads/{{number}}/{{action}}", lead_action)
    router.add_get(f"{PREFIX}/leads/{{number}}/messages/{{message}}/attachments/{{index}}", lead_file)
    router.add_get(f"{PREFIX}/breaches", breaches)
    router.add_get(f"{PREFIX}/team", team)
    router.add_post(f"{PREFIX}/team/{{manager}}/away", set_away)
