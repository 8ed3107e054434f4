"""The staff desk: one forum topic per lead in the staff group, kept in step with the lead.

Events on the hub's bus mark a lead "dirty"; one worker per staff chat brings dirty leads up
to date, most urgent first (leads nobody can see yet, then nearest breach, answered leads
last): it creates the topic and the lead card when
missing (also when staff deleted the topic by hand), posts every customer message not yet
shown, coalesced into as few posts as fit in 4096 characters (a message's stored files follow
its text as documents), then notices and card edits.
What was shown is tracked in the store, so a restart resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiogram.exceptions import TelegramBadRequest
from aiogram.methods import (
    CloseForumTopic,
    CopyMessage,
    CreateForumTopic,
    EditMessageCaption,
    EditMessageText,
    ReopenForumTopic,
    SendDocument,
    SendMessage,
)
from aiogram.types import FSInputFile, InlineKeyboardButton, InlineKeyboardMarkup, LinkPreviewOptions

from channels.telegram.api import TelegramApi, thread_not_found
from channels.telegram.texts import (
    MAX_TEXT,
    esc,
    local_time,
    mention,
    plain_staff,
    raw_staff,
    split_html_escaped,
    staff,
    staff_delivery_failure,
    staff_label,
    staff_left_out,
    truncate_html,
)
from channels.telegram.updates import UNSHOWN
from hub.actions import LEAD_TAGGED, SPAM_TAG
from hub.attachments import is_stored_ref
from hub.domain import (
    ACTIVE_STATUSES,
    Attachment,
    Contact,
    Direction,
    Event,
    EventType,
    IdentityKind,
    Lead,
    Message,
    utcnow,
)
from hub.errors import PermanentError, TransientError
from hub.sla import FIRST_RESPONSE, NEXT_RESPONSE, RESOLUTION
from hub.tasks import stop_task
from storage.base import LeadQuery

if TYPE_CHECKING:
    from hub.app import Hub

log = logging.getLogger(__name__)

NO_PREVIEW = LinkPreviewOptions(is_disabled=True)
#: Telegram's limit for a media caption.
MAX_CAPTION = 1024
FAR_FUTURE = 1e12
ANSWERED = 1e11
LEAD_LEASE_SECONDS = 120.0
NOT_VISIBLE = 1e11
#: The Bot API's limit for a file a bot uploads; larger files stay a line naming them.
MAX_UPLOAD = 50 * 1024 * 1024
#: Seconds for one upload (a request's usual bound is far too short for 50 MB).
UPLOAD_TIMEOUT = 300


@dataclass(slots=True)
class Topic:
    """Where a lead lives in the staff group (thread None: a group without topics)."""

    chat: int
    thread: int | None
    card: int | None = None
    seen: int = 0  # how many of the lead's messages (in order) have been looked at
    closed: bool = False
    shown: str = ""  # the card's status and deadline lines as last posted (see `card_state`)


@dataclass(slots=True)
class _Pending:
    refresh_card: bool = False
    close: bool = False
    reopen: bool = False
    closed_by_hand: bool = False
    edited: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Unit:
    """One thing to post: coalescable text, or a copy of a customer's media message."""

    html: str
    ids: list[str]
    last_index: int  # the message index shown completely once this unit is posted
    copy_from: tuple[int, int] | None = None
    partial: bool = False  # a non-final part of a message longer than one post
    upload: Attachment | None = None  # a stored file of the message, sent as a document
    files_of: str = ""  # this unit ends the text of this message, whose files follow
    step: int = 0  # an upload's `files_key` progress once it is posted


class _ChatQueue:
    def __init__(self) -> None:
        self.leads: dict[int, float] = {}
        self.hidden: set[int] = set()  # queued leads that have no topic yet
        self.posts: deque[str] = deque()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


def topic_key(lead_number: int) -> str:
    """State key: where a lead's topic is (`Topic` as JSON)."""
    return f"tg.topic.{lead_number}"


def thread_key(chat: int, thread: int) -> str:
    """State key: the lead of a forum topic."""
    return f"tg.thread.{chat}:{thread}"


def post_key(chat: int, message_id: int) -> str:
    """State key: the lead and messages shown in one staff-group post."""
    return f"tg.post.{chat}:{message_id}"


def copy_key(message_id: str) -> str:
    """State key: the staff-group post that shows a customer message."""
    return f"tg.copy.{message_id}"


def edit_key(message_id: str) -> str:
    """State key: the latest text of a customer message edited in Telegram."""
    return f"tg.edit.{message_id}"


def files_key(topic: Topic, message_id: str) -> str:
    """State key: how much of a message with files a topic shows (1: its text, 1 + n: its text
    and its first n files). Per topic, so a topic made again shows everything again."""
    return f"tg.files.{topic.chat}:{topic.thread or 0}:{message_id}"


def uploadable(attachment: Attachment) -> bool:
    """A file kept in the attachment store that Telegram takes from a bot."""
    return is_stored_ref(attachment.ref) and attachment.size <= MAX_UPLOAD


def notices_key(lead_number: int) -> str:
    """State key: notices (assignments, SLA alerts...) still to post in a lead's topic."""
    return f"tg.notices.{lead_number}"


def posts_key(chat: int) -> str:
    """State key: plain posts (alerts) still to send to a chat."""
    return f"tg.posts.{chat}"


def deadline_of(lead: Lead, data: dict[str, Any]) -> datetime | None:
    """The deadline an SLA mark (an sla.* event's data) is about, not the time of the mark."""
    mark: datetime | None = None
    if isinstance(data.get("due"), str):
        with contextlib.suppress(ValueError):
            mark = datetime.fromisoformat(data["due"])
    if data.get("level") == "breach" and mark is not None:
        return mark  # a breach is marked at the deadline itself
    # A warning is marked before the deadline and an escalation after it: the lead has the deadline.
    target = data.get("target")
    if target == RESOLUTION:
        deadline = lead.resolution_due
    elif target == NEXT_RESPONSE:
        deadline = lead.sla_due if lead.sla_target == NEXT_RESPONSE else None
    else:
        deadline = lead.first_response_due
    return deadline or mark


def open_target(lead: Lead) -> tuple[str, datetime] | None:
    """The lead's SLA target still running that is due first, and its due time (None: none)."""
    running: list[tuple[datetime, str]] = []
    if lead.sla_target is not None and lead.sla_due is not None:
        running.append((lead.sla_due, lead.sla_target))
    elif lead.first_response_at is None and lead.first_response_due is not None:
        running.append((lead.first_response_due, FIRST_RESPONSE))
    if lead.resolution_due is not None and lead.sla_paused_at is None and lead.is_active:
        running.append((lead.resolution_due, RESOLUTION))
    if not running:
        return None
    due, target = min(running)
    return target, due


class StaffDesk:
    """Mirrors leads into the staff group(s) and posts alerts; see the module docstring."""

    def __init__(self, hub: Hub, api: TelegramApi) -> None:
        self._hub = hub
        self._api = api
        self._settings = hub.settings.telegram
        self._topics: dict[int, Topic | None] = {}
        self._pending: dict[int, _Pending] = {}
        self._queues: dict[int, _ChatQueue] = {}
        self._plain_chats: set[int] = set()
        self._state_lock = asyncio.Lock()  # read-modify-write of the notice lists
        self._running = False
        self.posts = 0
        self.coalesced_messages = 0

    # --- configuration ------------------------------------------------------------------
    def group_for_team(self, team: str | None) -> int | None:
        """The staff group of a team (its own, or the default one)."""
        settings = self._hub.settings.teams.get(team or "")
        if settings is not None and settings.staff_group_id is not None:
            return settings.staff_group_id
        return self._settings.staff_group_id

    def staff_chats(self) -> set[int]:
        """Every chat the bot is meant to be in (staff groups and the alerts chat)."""
        chats = {t.staff_group_id for t in self._hub.settings.teams.values() if t.staff_group_id}
        if self._settings.staff_group_id is not None:
            chats.add(self._settings.staff_group_id)
        if self._settings.alerts_chat_id is not None:
            chats.add(self._settings.alerts_chat_id)
        return chats

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Start a worker for every chat that already has work."""
        self._running = True
        for queue in self._queues.values():
            self._ensure_worker(queue)

    async def stop(self) -> None:
        """Stop the workers; unfinished work is picked up by the next start's resync."""
        self._running = False
        for queue in self._queues.values():
            if queue.task is not None:
                await stop_task(queue.task)
                queue.task = None

    async def resync(self, page: int = 200, each: Callable[[Lead], Awaitable[None]] | None = None) -> int:
        """Mark every active lead, so what a crash left unshown is shown (O(active leads))."""
        cursor: str | None = None
        count = 0
        for _ in range(100_000):
            result = await self._hub.store.list_leads(
                LeadQuery(statuses=tuple(ACTIVE_STATUSES)), page, cursor
            )
            for lead in result.items:
                await self._mark(lead)
                if each is not None:
                    await each(lead)
                count += 1
            cursor = result.next_cursor
            if not cursor:
                break
        return count

    def idle(self) -> bool:
        """True when no chat has work waiting (for tests and benchmarks)."""
        return all(not q.leads and not q.posts for q in self._queues.values())

    # --- topic state --------------------------------------------------------------------
    async def topic(self, lead_number: int) -> Topic | None:
        """Where the lead lives in the staff group, if its topic exists."""
        if lead_number not in self._topics:
            raw = await self._hub.store.get_state(topic_key(lead_number))
            self._topics[lead_number] = Topic(**raw) if isinstance(raw, dict) else None
        return self._topics[lead_number]

    async def _save(self, lead_number: int, topic: Topic | None) -> None:
        self._topics[lead_number] = topic
        await self._hub.store.set_state(topic_key(lead_number), asdict(topic) if topic else None)

    async def lead_for_thread(self, chat: int, thread: int) -> int | None:
        """The lead whose topic this is."""
        value = await self._hub.store.get_state(thread_key(chat, thread))
        return int(value) if value is not None else None

    async def lead_for_post(self, chat: int, message_id: int) -> int | None:
        """The lead a staff-group post belongs to (for replies in a group without topics)."""
        value = await self._hub.store.get_state(post_key(chat, message_id))
        return int(value["lead"]) if isinstance(value, dict) else None

    # --- marking work -------------------------------------------------------------------
    def _pending_for(self, lead_number: int) -> _Pending:
        return self._pending.setdefault(lead_number, _Pending())

    async def _mark(self, lead: Lead) -> None:
        topic = await self.topic(lead.number)
        chat = topic.chat if topic else self.group_for_team(lead.team)
        if chat is None:
            return
        if lead.first_response_at is None and lead.first_response_due is not None:
            due = lead.first_response_due.timestamp()
        else:
            # Answered (or clock-less) leads wait behind every lead still racing its breach time.
            due = ANSWERED + lead.created_at.timestamp()
        queue = self._queue(chat)
        if topic is None:
            # A lead nobody in the group can see yet goes before follow-ups of visible ones.
            due -= NOT_VISIBLE
            queue.hidden.add(lead.number)
        queue.leads[lead.number] = min(due, queue.leads.get(lead.number, FAR_FUTURE))
        queue.wake.set()

    def _queue(self, chat: int) -> _ChatQueue:
        queue = self._queues.get(chat)
        if queue is None:
            queue = self._queues[chat] = _ChatQueue()
            self._ensure_worker(queue, chat)
        return queue

    def _ensure_worker(self, queue: _ChatQueue, chat: int | None = None) -> None:
        if not self._running or (queue.task is not None and not queue.task.done()):
            return
        if chat is None:
            chat = next(c for c, q in self._queues.items() if q is queue)
        queue.task = asyncio.create_task(self._work(chat, queue), name=f"telegram-desk-{chat}")

    async def post_to(self, chat: int, html: str) -> None:
        """Queue a plain post (alerts) to a chat; kept in the store until it is sent."""
        async with self._state_lock:
            queued = list(await self._hub.store.get_state(posts_key(chat)) or [])
            await self._hub.store.set_state(posts_key(chat), [*queued, html])
        self._wake_posts(chat)

    def _wake_posts(self, chat: int) -> None:
        queue = self._queue(chat)
        queue.posts.append("")  # a token: the texts themselves live in the store
        queue.wake.set()

    async def load_pending(self) -> None:
        """After a restart: alerts that were queued but not sent yet go out."""
        for chat in self.staff_chats():
            if await self._hub.store.get_state(posts_key(chat)):
                self._wake_posts(chat)

    async def _add_notices(self, lead_number: int, notices: list[str]) -> None:
        async with self._state_lock:
            queued = list(await self._hub.store.get_state(notices_key(lead_number)) or [])
            await self._hub.store.set_state(notices_key(lead_number), [*queued, *notices])

    async def _drop_first(self, key: str, count: int) -> None:
        async with self._state_lock:
            queued = list(await self._hub.store.get_state(key) or [])
            await self._hub.store.set_state(key, queued[count:] or None)

    async def notice(self, lead: Lead, html: str) -> None:
        """Post a notice in the lead's topic (for what no bus event announces)."""
        await self._add_notices(lead.number, [html])
        await self._mark(lead)

    async def closed_by_hand(self, lead: Lead) -> None:
        """Staff closed an active lead's topic in Telegram: closing a topic resolves nothing, so
        say how to resolve it; the customer's next message opens the topic again."""
        self._pending_for(lead.number).closed_by_hand = True
        await self._add_notices(lead.number, ["📌 " + staff("tg.event.closed_by_hand", lead=lead.ref)])
        await self._mark(lead)

    async def customer_edited(self, lead: Lead, message_id: str) -> None:
        """A customer edited a message: update its copy in the topic."""
        self._pending_for(lead.number).edited.add(message_id)
        await self._mark(lead)

    # --- events -------------------------------------------------------------------------
    async def on_event(self, event: Event, lead: Lead | None) -> None:
        """Bus subscriber: turn lead events into topic work."""
        if event.lead_number is None:
            return
        if lead is None or lead.number != event.lead_number:
            lead = await self._hub.store.get_lead(event.lead_number)
            if lead is None:
                return
        else:
            # Events carry the lead as it was; the desk renders what it is now.
            lead = await self._hub.store.get_lead(lead.number) or lead
        pending = self._pending_for(lead.number)
        notices: list[str] = []
        data = event.data
        by = str(data.get("by") or "")
        match event.type:
            case EventType.LEAD_CREATED:
                pass
            case EventType.MESSAGE_ADDED:
                # A customer writing into a topic staff closed by hand opens it again (a lead
                # the hub resolved is reopened by its own event).
                pending.reopen = pending.reopen or data.get("direction") == "in"
            case EventType.LEAD_ASSIGNED:
                if by == "router" and "previous" not in data:
                    # A new lead's first routing: its card, not rendered yet, shows the assignee.
                    return
                manager = self._hub.settings.manager(str(data.get("assignee") or ""))
                who = mention(manager.telegram_id, manager.name) if manager else esc(data.get("assignee"))
                author = staff("tg.event.by_router") if by == "router" else esc(by)
                notices.append("👤 " + raw_staff("tg.event.assigned", who=who, by=author))
                pending.refresh_card = True
            case EventType.LEAD_UNASSIGNED:
                # The router took the lead from someone away and nobody else could have it, or
                # staff handed it back to the queue (named, as a manual reassignment is).
                if by and by != "router":
                    notices.append("👤 " + staff("tg.event.unassigned", by=by))
                pending.refresh_card = True
            case EventType.LEAD_RESOLVED:
                notices.append("✅ " + staff("tg.event.resolved", by=by))
                pending.refresh_card = True
                pending.close, pending.reopen = True, False
            case EventType.LEAD_REOPENED:
                notices.append("↩️ " + staff("tg.event.reopened", by=by))
                pending.refresh_card = True
                pending.reopen, pending.close = True, False
            case EventType.LEAD_STATUS:
                if "kind" in data:
                    kind = staff(f"tg.kind.name.{data['kind']}")
                    notices.append("🏷 " + staff("tg.event.kind", kind=kind, by=by))
                pending.refresh_card = True
            case EventType.SLA_WARNING | EventType.SLA_BREACHED | EventType.SLA_ESCALATED:
                await self._alert(lead, event.type != EventType.SLA_WARNING, data, notices)
            case EventType.DELIVERY_FAILED:
                # The channel's own English stays in the event and the log; staff read the reason.
                reason = staff_delivery_failure(str(data.get("reason") or ""))
                if data.get("channel"):
                    channel = staff_label("channel", str(data["channel"]))
                    key = "tg.event.ack_failed" if data.get("automatic") else "tg.event.delivery_failed"
                    notices.append("❗ " + staff(key, channel=channel, reason=reason))
                else:
                    notices.append("❗ " + staff("tg.event.delivery_failed_nowhere", reason=reason))
            case EventType.DELIVERY_FILES_LEFT_OUT:
                # The reply itself went out, so nothing else would tell staff the file did not.
                channel = staff_label("channel", str(data.get("channel") or ""))
                for file in data.get("files") or []:
                    reason = staff_left_out(str(file.get("reason") or ""))
                    notices.append(
                        "📎 "
                        + staff(
                            "tg.event.file_left_out", channel=channel, file=file.get("name"), reason=reason
                        )
                    )
            case EventType.REPLY_RECORDED:
                # A reply written in the topic is shown there already, but it still stops a
                # deadline the card names, so the lead is synced either way.
                message = await self._hub.store.get_message(str(data.get("message_id")))
                if message is not None and data.get("source") != "telegram":
                    channel = staff_label("channel", message.channel)
                    head = staff("tg.event.reply", who=message.author, channel=channel)
                    notices.append(f"💬 <i>{head}</i>\n{esc(message.text[:3500])}")
            case _ if event.type == LEAD_TAGGED and SPAM_TAG in (data.get("tags") or []):
                notices.append("🚫 " + staff("tg.event.spam", by=by))
            case _:
                return
        if notices:
            await self._add_notices(lead.number, notices)
        await self._mark(lead)

    async def _alert(self, lead: Lead, breached: bool, data: dict[str, Any], notices: list[str]) -> None:
        """An SLA warning/breach/escalation in the lead's topic (the alerts chat: `alerts.AlertRelay`)."""
        notices.append(self.alert_text(lead, breached, data))

    def alert_text(self, lead: Lead, breached: bool, data: dict[str, Any]) -> str:
        """The HTML of an SLA warning/breach/escalation, tagging who must act."""
        ids = [str(i) for i in data.get("notify") or []] or ([lead.assignee] if lead.assignee else [])
        managers = [m for m in (self._hub.settings.manager(i) for i in ids) if m is not None]
        who = ", ".join(mention(m.telegram_id, m.name) for m in managers)
        key = "tg.event.breached" if breached else "tg.event.warning"
        if data.get("target") in (NEXT_RESPONSE, RESOLUTION):
            key += f".{data['target']}"
        due = esc(local_time(deadline_of(lead, data), self._hub.settings.sla.calendar.timezone))
        text = ("🔥 " if breached else "⚠️ ") + raw_staff(key, lead=esc(lead.ref), due=due, who=who)
        if data.get("level") == "escalation":
            text = "⏫ " + text
        return text

    # --- the worker ---------------------------------------------------------------------
    async def _work(self, chat: int, queue: _ChatQueue) -> None:
        while True:
            if not queue.leads and not queue.posts:
                queue.wake.clear()
                await queue.wake.wait()
                continue
            if queue.posts:
                queue.posts.clear()
                await self._send_posts(chat)
                continue
            number = min(queue.leads, key=lambda n: (queue.leads[n], n))
            del queue.leads[number]
            queue.hidden.discard(number)
            try:
                await self.sync(number)
            except TransientError as exc:
                log.warning("L-%s telegram: staff group update postponed: %s", number, exc)
                delay = exc.retry_after or 5.0
                asyncio.get_running_loop().call_later(delay, self._requeue, chat, number)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("L-%s telegram: staff group update failed", number)

    async def _send_posts(self, chat: int) -> None:
        """Send the chat's queued plain posts, oldest first, each removed once it is out."""
        for _ in range(1000):
            queued = await self._hub.store.get_state(posts_key(chat))
            if not queued:
                return
            try:
                await self._send(chat, None, str(queued[0]))
            except TransientError as exc:
                log.warning("telegram: posting to chat %s postponed: %s", chat, exc)
                asyncio.get_running_loop().call_later(exc.retry_after or 5.0, self._wake_posts, chat)
                return
            except (PermanentError, TelegramBadRequest) as exc:
                log.error("telegram: could not post to chat %s, dropping one post: %s", chat, exc)
            await self._drop_first(posts_key(chat), 1)

    def _requeue(self, chat: int, number: int) -> None:
        queue = self._queue(chat)
        queue.leads.setdefault(number, 0.0)
        queue.wake.set()

    async def sync(self, number: int) -> None:
        """Bring one lead's topic up to date (create, mirror, notices, edits).

        Several hub processes may have work for one lead (webhooks behind a load balancer,
        dashboard replies): a per-lead lease in the store lets one of them at a time do it,
        and the topic state is read fresh under it.
        """
        lease = f"telegram:lead:{number}"
        holder = self._hub.instance_id
        if not await self._hub.store.acquire_lease(lease, holder, utcnow(), LEAD_LEASE_SECONDS):
            raise TransientError(f"L-{number}: another hub process is updating its topic", 1.0)
        try:
            self._topics.pop(number, None)
            await self._sync_topic(number)
        finally:
            await self._hub.store.release_lease(lease, holder)

    async def _sync_topic(self, number: int) -> None:
        for _attempt in range(3):
            try:
                await self._sync(number)
                return
            except TelegramBadRequest as exc:
                if not thread_not_found(exc):
                    raise
                # Deleted by hand: a new topic gets the whole conversation again.
                log.warning("L-%s telegram: topic is gone, creating it again", number)
                topic = await self.topic(number)
                if topic is not None and topic.thread is not None:
                    await self._hub.store.set_state(thread_key(topic.chat, topic.thread), None)
                await self._save(number, None)
        raise TransientError(f"L-{number}: the staff topic keeps disappearing", 30.0)

    async def _sync(self, number: int) -> None:
        lead = await self._hub.store.get_lead(number)
        if lead is None:
            return
        contact = await self._hub.store.get_contact(lead.contact_id)
        pending = self._pending.pop(number, _Pending())
        try:
            topic = await self.topic(number)
            messages = await self._hub.store.list_messages(number)
            if topic is None:
                chat = self.group_for_team(lead.team)
                if chat is None:
                    return
                topic = await self._create_topic(lead, contact, chat)
            if topic.card is None or topic.seen < len(messages):
                # Content is read when the post can go out at once, so it carries everything
                # received until then (the wait for the slot may be long in a burst).
                await self._api.limiter.ready(topic.chat)
                if topic.card is None and self._queue(topic.chat).hidden:
                    # A burst of new leads: every one gets its topic before any gets its card,
                    # so the cards, posted later, carry more of each lead's first messages and
                    # fewer follow-up posts compete for the group's limited rate.
                    await self._mark(lead)
                    return
                lead = await self._hub.store.get_lead(number) or lead
                messages = await self._hub.store.list_messages(number)
            if topic.card is None:
                await self._post_card(lead, contact, topic, messages)
                pending.refresh_card = False
            if pending.closed_by_hand and not topic.closed:
                topic.closed = True
                await self._save(number, topic)
            pending.closed_by_hand = False
            if pending.reopen and topic.closed and lead.is_active:
                await self._topic_call(topic, reopen=True)
                topic.closed = False
                await self._save(number, topic)
            await self._mirror(lead, topic, messages)
            if pending.edited:
                await self._apply_edits(lead, contact, topic, pending.edited)
                pending.edited = set()
            notices = list(await self._hub.store.get_state(notices_key(number)) or [])
            if notices:
                await self._post_notices(topic, notices)
                await self._drop_first(notices_key(number), len(notices))
            stale = topic.shown != self.card_state(lead)
            if (pending.refresh_card or stale) and topic.card is not None:
                # A reply or a customer's message moves the running deadline without an event
                # that asks for the card; it is edited only when what it shows has changed.
                await self._refresh_card(lead, contact, topic)
                pending.refresh_card = False
            if pending.close and not topic.closed and lead.status.value in ("resolved", "closed"):
                await self._topic_call(topic, reopen=False)
                topic.closed = True
                await self._save(number, topic)
            pending.close = pending.reopen = False
        finally:
            if (
                pending.refresh_card
                or pending.edited
                or pending.close
                or pending.reopen
                or pending.closed_by_hand
            ):
                # Not done (an error): keep the work for the next attempt.
                mine = self._pending_for(number)
                mine.refresh_card |= pending.refresh_card
                mine.edited |= pending.edited
                mine.close |= pending.close
                mine.reopen |= pending.reopen
                mine.closed_by_hand |= pending.closed_by_hand

    async def _topic_call(self, topic: Topic, reopen: bool) -> None:
        if topic.thread is None:
            return
        method: CloseForumTopic | ReopenForumTopic
        if reopen:
            method = ReopenForumTopic(chat_id=topic.chat, message_thread_id=topic.thread)
        else:
            method = CloseForumTopic(chat_id=topic.chat, message_thread_id=topic.thread)
        try:
            await self._api.call(method, topic.chat)
        except TelegramBadRequest as exc:
            if thread_not_found(exc):
                raise
            # TOPIC_NOT_MODIFIED and the like: the topic already is as we want it.
            log.info("telegram: topic %s in %s: %s", topic.thread, topic.chat, exc.message)

    # --- creating the topic and the card -------------------------------------------------
    def _topic_name(self, lead: Lead, contact: Contact | None) -> str:
        name = (contact.name if contact else "") or "?"
        return f"{lead.ref} · {name} · {staff_label('channel', lead.channel)}"[:128]

    async def _create_topic(self, lead: Lead, contact: Contact | None, chat: int) -> Topic:
        thread: int | None = None
        if chat not in self._plain_chats:
            try:
                created = await self._api.call(
                    CreateForumTopic(chat_id=chat, name=self._topic_name(lead, contact)), chat
                )
                thread = created.message_thread_id
            except TelegramBadRequest as exc:
                if "forum" in exc.message.lower():
                    log.info("telegram: chat %s has no topics; leads are posted as messages", chat)
                    self._plain_chats.add(chat)
                else:
                    # No right to manage topics, say: the lead is still shown, as a message.
                    log.error("%s telegram: cannot create a topic in %s: %s", lead.ref, chat, exc.message)
        topic = Topic(chat=chat, thread=thread, seen=0, closed=False)
        if thread is not None:
            await self._hub.store.set_state(thread_key(chat, thread), lead.number)
        await self._save(lead.number, topic)
        log.info("%s telegram: topic %s created in %s", lead.ref, thread, chat)
        return topic

    async def _post_card(
        self, lead: Lead, contact: Contact | None, topic: Topic, messages: list[Message]
    ) -> None:
        """The lead card, carrying as many of the not yet shown messages as fit."""
        units = await self._units(topic, messages, topic.seen)
        header = self._card_header(lead, contact)
        card_units: list[_Unit] = []
        size = len(header)
        for unit in units:
            if unit.copy_from is not None or unit.partial or size + 2 + len(unit.html) > MAX_TEXT:
                break
            card_units.append(unit)
            size += 2 + len(unit.html)
        # A long subject can make the header alone exceed one message.
        html = truncate_html("\n\n".join([header, *(u.html for u in card_units)]))
        ids = [i for u in card_units for i in u.ids]
        sent = await self._send(topic.chat, topic.thread, html, self._card_keyboard(lead))
        topic.card = sent
        topic.shown = self.card_state(lead)
        if card_units:
            topic.seen = max(topic.seen, card_units[-1].last_index + 1)
        await self._remember_post(lead.number, topic.chat, sent, ids, card=True)
        await self._save(lead.number, topic)
        self.coalesced_messages += len(ids)

    def _card_header(self, lead: Lead, contact: Contact | None) -> str:
        manager = self._hub.settings.manager(lead.assignee or "")
        assignee = esc(manager.name) if manager else esc(staff("tg.card.unassigned"))
        reach: list[str] = []
        if contact is not None:
            for ident in contact.identities:
                if ident.kind == IdentityKind.TELEGRAM:
                    reach.append(mention(int(ident.value), ident.display_name or contact.name))
                elif ident.kind == IdentityKind.TELEGRAM_USERNAME:
                    reach.append("@" + esc(ident.value))
                else:
                    reach.append(esc(ident.value))
        name = esc(contact.name) if contact else "?"
        lines = [
            f"<b>{esc(lead.ref)}</b> · {staff(f'tg.kind.name.{lead.kind.value}')}",
            f"{staff('tg.card.contact')}: {name}" + (f" ({', '.join(reach)})" if reach else ""),
            f"{staff('tg.card.channel')}: {esc(staff_label('channel', lead.channel))}",
            f"{staff('tg.card.assignee')}: {assignee}",
            *self._state_lines(lead),
        ]
        if lead.subject:
            lines.insert(1, f"<b>{esc(lead.subject)}</b>")
        return "\n".join(lines)

    def _state_lines(self, lead: Lead) -> list[str]:
        """The card's status line and the line naming the deadline that runs now, if one does."""
        status = f"{staff('tg.card.status')}: {esc(staff_label('status', lead.status.value))}"
        running = open_target(lead)
        if running is None:
            return [status, f"{staff('tg.card.due')}: {staff('tg.card.due_none')}"]
        target, due = running
        when = esc(local_time(due, self._hub.settings.sla.calendar.timezone))
        return [status, f"{staff('tg.card.due')} ({staff(f'tg.target.{target}')}): {when}"]

    def card_state(self, lead: Lead) -> str:
        """What of the card changes without an event asking for it: the status and the deadline."""
        return "\n".join(self._state_lines(lead))

    def _card_keyboard(self, lead: Lead) -> InlineKeyboardMarkup:
        n = lead.number
        return InlineKeyboardMarkup(
            inline_keyboard=[
                [
                    InlineKeyboardButton(text=staff("tg.card.take"), callback_data=f"take:{n}"),
                    InlineKeyboardButton(text=staff("tg.card.resolve"), callback_data=f"resolve:{n}"),
                ],
                [
                    InlineKeyboardButton(text=staff("tg.card.reassign"), callback_data=f"reassign:{n}"),
                    InlineKeyboardButton(text=staff("tg.card.spam"), callback_data=f"spam:{n}"),
                ],
            ]
        )

    async def _refresh_card(self, lead: Lead, contact: Contact | None, topic: Topic) -> None:
        assert topic.card is not None
        html = await self._render_post(lead, contact, topic.chat, topic.card)
        try:
            await self._api.call(
                EditMessageText(
                    chat_id=topic.chat,
                    message_id=topic.card,
                    text=html,
                    reply_markup=self._card_keyboard(lead),
                    link_preview_options=NO_PREVIEW,
                ),
                topic.chat,
            )
        except TelegramBadRequest as exc:
            if "not modified" not in exc.message.lower():
                log.warning("%s telegram: could not update the card: %s", lead.ref, exc.message)
        # Also after a refused edit: retrying it on every sync of the lead would not help.
        state = self.card_state(lead)
        if topic.shown != state:
            topic.shown = state
            await self._save(lead.number, topic)

    # --- mirroring customer messages -----------------------------------------------------
    async def _head(self, message: Message) -> tuple[str, str]:
        """The HTML line naming a customer message's author and time, and its (edited) text."""
        edited = await self._hub.store.get_state(edit_key(message.id))
        text = str(edited) if isinstance(edited, str) else message.text
        if text == UNSHOWN:
            text = plain_staff("tg.event.unshown")
        when = local_time(message.created_at, self._hub.settings.sla.calendar.timezone)[11:]
        icon = "✉️ " if message.channel == "email" else ""
        head = f"{icon}<b>{esc(message.author)}</b> <i>{esc(when)}</i>"
        if edited is not None:
            head += f" <i>({esc(staff('tg.event.edited'))})</i>"
        return head, text

    async def _block(self, message: Message, original: bool = False) -> str:
        """A customer message as one HTML block (`original`: its text as received, not edited)."""
        head, text = await self._head(message)
        if original:
            text = message.text
        body = esc(text)
        if message.subject:
            line = staff("tg.message.subject", subject=message.subject)
            body = f"{line}\n{body}" if body else line
        files = self._files(message)
        if files:
            body += "\n" + files
        return f"{head}\n{body}" if body else head

    @staticmethod
    def _files(message: Message) -> str:
        """The lines naming a message's files that are neither a Telegram copy nor uploaded."""
        files = [a for a in message.attachments if not a.ref.startswith("tg-file:") and not uploadable(a)]
        return "\n".join(f"📎 {esc(a.name)} ({a.size} B)" for a in files)

    async def _units(self, topic: Topic, messages: list[Message], start: int) -> list[_Unit]:
        units: list[_Unit] = []
        for index in range(start, len(messages)):
            message = messages[index]
            if message.direction != Direction.IN:
                continue
            origin = self._telegram_origin(message)
            if origin is not None and any(a.ref.startswith("tg-file:") for a in message.attachments):
                units.append(_Unit("", [message.id], index, copy_from=origin))
                continue
            uploads = [a for a in message.attachments if uploadable(a)]
            if not uploads:
                units.extend(await self._text_units(message, index))
                continue
            # The message counts as shown once its last file is: a restart in between posts
            # what is missing, and its progress says what is not (text, then file by file).
            stored = await self._hub.store.get_state(files_key(topic, message.id))
            done = stored if isinstance(stored, int) else 0
            if done < 1:
                texts = await self._text_units(message, index)
                for unit in texts:
                    unit.last_index, unit.partial = index - 1, True
                texts[-1].files_of = message.id
                units.extend(texts)
            for step, attachment in enumerate(uploads, 2):
                if done < step:
                    final = step == len(uploads) + 1
                    units.append(
                        _Unit(
                            "",
                            [message.id],
                            index if final else index - 1,
                            partial=not final,
                            upload=attachment,
                            step=step,
                        )
                    )
        return units

    async def _text_units(self, message: Message, index: int) -> list[_Unit]:
        """A customer message as text: one unit, or parts naming their author when too long."""
        units: list[_Unit] = []
        block = await self._block(message)
        if len(block) <= MAX_TEXT:
            units.append(_Unit(block, [message.id], index))
        else:
            # Every part says whose message it is and which part: several customers'
            # long texts in a row must not read as one anonymous wall of text.
            head, text = await self._head(message)
            if message.subject:
                head += "\n" + staff("tg.message.subject", subject=message.subject)
            head = truncate_html(head, 300)
            parts = split_html_escaped(text, MAX_TEXT - len(head) - 40)
            pieces = [f"{head} <i>({n}/{len(parts)})</i>\n{part}" for n, part in enumerate(parts, 1)]
            if files := self._files(message):
                pieces.append(truncate_html(f"{head}\n{files}"))
            for number, html in enumerate(pieces, 1):
                final = number == len(pieces)
                units.append(_Unit(html, [message.id], index if final else index - 1, partial=not final))
        return units

    @staticmethod
    def _telegram_origin(message: Message) -> tuple[int, int] | None:
        if message.channel != "telegram" or not message.external_id:
            return None
        chat, _, msg = message.external_id.partition(":")
        try:
            return int(chat), int(msg)
        except ValueError:
            return None

    async def _mirror(self, lead: Lead, topic: Topic, messages: list[Message]) -> None:
        if topic.seen >= len(messages):
            return
        units = await self._units(topic, messages, topic.seen)
        batch: list[_Unit] = []

        async def flush() -> None:
            if not batch:
                return
            html = "\n\n".join(u.html for u in batch)
            ids = [i for u in batch for i in u.ids]
            await self._post_html(lead, topic, html, ids, batch[-1].last_index + 1)
            self.coalesced_messages += len(ids)
            for done in batch:
                if done.files_of:
                    await self._hub.store.set_state(files_key(topic, done.files_of), 1)
            batch.clear()

        for unit in units:
            if unit.copy_from is not None:
                await flush()
                from_chat, from_message = unit.copy_from
                copied = await self._api.call(
                    CopyMessage(
                        chat_id=topic.chat,
                        message_thread_id=topic.thread,
                        from_chat_id=from_chat,
                        message_id=from_message,
                    ),
                    topic.chat,
                )
                self.posts += 1
                self.coalesced_messages += 1
                await self._remember_post(lead.number, topic.chat, copied.message_id, unit.ids, copy=True)
                topic.seen = unit.last_index + 1
                await self._save(lead.number, topic)
                continue
            if unit.upload is not None:
                await flush()
                await self._upload(lead, topic, unit.ids, unit.upload)
                await self._hub.store.set_state(files_key(topic, unit.ids[0]), unit.step)
                if unit.last_index + 1 > topic.seen:
                    topic.seen = unit.last_index + 1
                    await self._save(lead.number, topic)
                continue
            if batch and sum(len(u.html) + 2 for u in batch) + len(unit.html) > MAX_TEXT:
                await flush()
            batch.append(unit)
        await flush()
        if topic.seen < len(messages):
            topic.seen = len(messages)
            await self._save(lead.number, topic)

    async def _upload(self, lead: Lead, topic: Topic, ids: list[str], attachment: Attachment) -> None:
        """A customer's stored file as a document in the topic (a line naming it when it cannot
        be: gone from the disk, or refused by Telegram)."""
        path = await self._hub.attachments.find(attachment.ref)
        line = f"📎 {esc(attachment.name)} ({attachment.size} B)"
        if path is None:
            log.warning("%s telegram: file %s of message %s is not on disk", lead.ref, attachment.ref, ids[0])
            await self._send(topic.chat, topic.thread, line)
            return
        try:
            sent = await self._api.call(
                SendDocument(
                    chat_id=topic.chat,
                    message_thread_id=topic.thread,
                    document=FSInputFile(path, filename=attachment.name or "file"),
                    disable_content_type_detection=True,
                ),
                topic.chat,
                timeout=UPLOAD_TIMEOUT,
            )
        except TelegramBadRequest as exc:
            if thread_not_found(exc):
                raise
            log.warning("%s telegram: file %s refused: %s", lead.ref, attachment.ref, exc.message)
            await self._send(topic.chat, topic.thread, line)
            return
        except PermanentError as exc:
            log.warning("%s telegram: file %s refused: %s", lead.ref, attachment.ref, exc)
            await self._send(topic.chat, topic.thread, line)
            return
        self.posts += 1
        # A reply to the document is a reply on the lead, like one to any of its posts.
        await self._remember_post(lead.number, topic.chat, sent.message_id, ids, copy=True)

    async def _post_notices(self, topic: Topic, notices: list[str]) -> None:
        """Notices in as few posts as fit (each notice is far below the limit by construction)."""
        chunk: list[str] = []
        for notice in [truncate_html(n) for n in notices]:
            if chunk and sum(len(c) + 2 for c in chunk) + len(notice) > MAX_TEXT:
                await self._send(topic.chat, topic.thread, "\n\n".join(chunk))
                chunk = []
            chunk.append(notice)
        if chunk:
            await self._send(topic.chat, topic.thread, "\n\n".join(chunk))

    async def _post_html(self, lead: Lead, topic: Topic, html: str, ids: list[str], seen: int) -> None:
        # Units are at most MAX_TEXT and batches are cut before they would exceed it.
        sent = await self._send(topic.chat, topic.thread, html)
        await self._remember_post(lead.number, topic.chat, sent, ids)
        if seen > topic.seen:
            topic.seen = seen
            await self._save(lead.number, topic)

    async def _send(
        self, chat: int, thread: int | None, html: str, markup: InlineKeyboardMarkup | None = None
    ) -> int:
        sent = await self._api.call(
            SendMessage(
                chat_id=chat,
                message_thread_id=thread,
                text=html,
                reply_markup=markup,
                link_preview_options=NO_PREVIEW,
            ),
            chat,
        )
        self.posts += 1
        return sent.message_id

    async def _remember_post(
        self,
        lead_number: int,
        chat: int,
        post_id: int,
        ids: list[str],
        card: bool = False,
        copy: bool = False,
    ) -> None:
        info: dict[str, Any] = {"lead": lead_number, "ids": ids, "card": card}
        if copy:
            info["copy"] = True  # a copy of the customer's media: it has a caption, not text
        await self._hub.store.set_state(post_key(chat, post_id), info)
        for message_id in ids:
            await self._hub.store.set_state(copy_key(message_id), [chat, post_id])

    # --- edits ----------------------------------------------------------------------------
    async def _render_post(self, lead: Lead, contact: Contact | None, chat: int, post_id: int) -> str:
        info: Any = await self._hub.store.get_state(post_key(chat, post_id))
        ids: list[str] = list(info.get("ids", [])) if isinstance(info, dict) else []
        blocks = []
        for message_id in ids:
            message = await self._hub.store.get_message(message_id)
            if message is not None:
                blocks.append(await self._block(message))
        card = isinstance(info, dict) and bool(info.get("card"))
        parts = ([self._card_header(lead, contact)] if card else []) + blocks
        return truncate_html("\n\n".join(parts))

    async def _apply_edits(self, lead: Lead, contact: Contact | None, topic: Topic, edited: set[str]) -> None:
        posts: set[tuple[int, int]] = set()
        for message_id in sorted(edited):
            message = await self._hub.store.get_message(message_id)
            if message is not None and len(await self._block(message)) > MAX_TEXT:
                # Too long for one post: the edited text is posted again in parts, or its end
                # would never be shown.
                for unit in await self._text_units(message, 0):
                    if unit.copy_from is None:
                        await self._send(topic.chat, topic.thread, unit.html)
                if len(await self._block(message, original=True)) > MAX_TEXT:
                    # It was shown in parts as well: re-rendering its last part would put the
                    # start of the new text there, cut off.
                    continue
            where = await self._hub.store.get_state(copy_key(message_id))
            if isinstance(where, list) and len(where) == 2:
                posts.add((int(where[0]), int(where[1])))
        for chat, post_id in sorted(posts):
            info = await self._hub.store.get_state(post_key(chat, post_id))
            card = isinstance(info, dict) and bool(info.get("card"))
            method: EditMessageText | EditMessageCaption
            if await self._is_media_copy(info):
                # Telegram refuses editMessageText on a photo or a document: the copy's caption
                # is what carries the customer's words (staff never saw an edited caption).
                method = EditMessageCaption(
                    chat_id=chat, message_id=post_id, caption=await self._edited_caption(info)
                )
            else:
                html = await self._render_post(lead, contact, chat, post_id)
                method = EditMessageText(
                    chat_id=chat,
                    message_id=post_id,
                    text=html,
                    reply_markup=self._card_keyboard(lead) if card else None,
                    link_preview_options=NO_PREVIEW,
                )
            try:
                await self._api.call(method, chat)
            except TelegramBadRequest as exc:
                # The edit is recorded in the store (and shown on the dashboard) anyway.
                log.info("%s telegram: could not update an edited copy: %s", lead.ref, exc.message)

    async def _is_media_copy(self, info: Any) -> bool:
        """True when a staff-group post is a copy of a customer's media message."""
        if not isinstance(info, dict):
            return False
        if info.get("copy"):
            return True
        ids = list(info.get("ids", []))
        if info.get("card") or len(ids) != 1:
            return False
        # Posts remembered before copies were flagged: a copy shows one Telegram media message.
        message = await self._hub.store.get_message(str(ids[0]))
        return (
            message is not None
            and self._telegram_origin(message) is not None
            and any(a.ref.startswith("tg-file:") for a in message.attachments)
        )

    async def _edited_caption(self, info: dict[str, Any]) -> str:
        """The caption of a media copy after the customer edited it, marked as edited."""
        ids = list(info.get("ids", []))
        edited = await self._hub.store.get_state(edit_key(str(ids[0]))) if ids else None
        text = str(edited) if isinstance(edited, str) else ""
        mark = f"<i>({esc(staff('tg.event.edited'))})</i>"
        return truncate_html(f"{mark}\n{esc(text)}" if text else mark, MAX_CAPTION)
