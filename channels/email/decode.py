"""The email channel's decoder: a stored raw message (`InboxItem`) -> `Inbound`."""

from __future__ import annotations

from hub.attachments import attachment_ref
from hub.config import EmailSettings
from hub.domain import Attachment, Identity, IdentityKind, Inbound, InboxItem, LeadKind, ThreadHints
from hub.errors import DecodeError

from .parse import ParsedEmail, has_reply_prefix, is_forward, parse_email
from .smtp import is_own_copy
from .text import guess_language, strip_quoted

CHANNEL = "email"
# The inbox row's meta key for the message's idempotency key in intake (see ingest.intake_key).
INTAKE_KEY = "intake_key"
MAX_TEXT = 50_000


def pick_kind(kinds: dict[str, LeadKind], recipients: list[str], subject: str) -> tuple[LeadKind | None, str]:
    """The kind configured for these recipients or this subject, and the recipient that matched.

    Keys: a full address, `local@` (any domain), `+tag` (plus-address), or a subject word.
    """
    lowered = subject.lower()
    for key, kind in kinds.items():
        key_l = key.strip().lower()
        for recipient in recipients:
            local, _, domain = recipient.partition("@")
            base, _, tag = local.partition("+")
            if "@" in key_l:
                key_local, _, key_domain = key_l.partition("@")
                if (local == key_local or base == key_local) and (not key_domain or key_domain == domain):
                    return kind, recipient
            elif key_l.startswith("+") and tag and tag == key_l[1:]:
                return kind, recipient
        if "@" not in key_l and not key_l.startswith("+") and key_l and key_l in lowered:
            return kind, recipients[0] if recipients else ""
    return None, recipients[0] if recipients else ""


class EmailDecoder:
    """Decodes raw email with the channel's settings (kinds, attachment limit)."""

    def __init__(self, settings: EmailSettings) -> None:
        self._settings = settings
        self._primed: dict[str, ParsedEmail] = {}

    def prime(self, external_id: str, parsed: ParsedEmail) -> None:
        """Hand over a parse the receiver already did, so the same bytes are not parsed twice."""
        self._primed[external_id] = parsed

    def forget(self, external_id: str) -> None:
        """Drop a primed parse that was not used."""
        self._primed.pop(external_id, None)

    def __call__(self, item: InboxItem) -> Inbound:
        parsed = self._primed.pop(item.external_id, None) or parse_email(item.payload)
        if parsed.bounce is not None:
            # Bounces never open leads: the receiver attaches them to the lead they bounce.
            raise DecodeError(
                "delivery status notification that could not be matched to a message we sent "
                f"(original ids: {', '.join(parsed.bounce.original_ids) or 'none'})"
            )
        if is_own_copy(self._settings.smtp.from_, parsed.sender, parsed.message_id):
            # Our own reply came back to the mailbox: it is no customer's message. The receiver
            # marks it done; a replayed one lands here and is marked done on its quarantine.
            raise DecodeError(f"our own outgoing mail (Message-ID {parsed.message_id}), not a customer's")
        return self.inbound(item, parsed)

    def attachments(self, parsed: ParsedEmail) -> tuple[Attachment, ...]:
        """Attachment records: stored by content address, or noted as dropped over the limit."""
        limit = self._settings.max_attachment_bytes
        records: list[Attachment] = []
        for raw in parsed.attachments:
            size = len(raw.data)
            if size > limit:
                records.append(
                    Attachment(
                        raw.name,
                        raw.content_type,
                        size,
                        dropped_reason=f"larger than the {limit}-byte limit (email.max_attachment_bytes)",
                    )
                )
            else:
                records.append(Attachment(raw.name, raw.content_type, size, ref=attachment_ref(raw.data)))
        return tuple(records)

    def inbound(self, item: InboxItem, parsed: ParsedEmail) -> Inbound:
        """The Inbound for one parsed message."""
        # A first message keeps its signature (name, phone): only a reply's history is old news.
        reply = bool(parsed.thread_ids) or parsed.lead_number is not None or has_reply_prefix(parsed.subject)
        forward = is_forward(parsed.subject)
        text = strip_quoted(parsed.text, reply=reply, forward=forward) if parsed.text else ""
        attachments = self.attachments(parsed)
        if not text and not parsed.subject and not attachments:
            raise DecodeError("empty message: no text, no subject and no attachments")
        kind, recipient = pick_kind(self._settings.kinds, parsed.recipients, parsed.subject)
        language = parsed.content_language or guess_language(f"{parsed.subject}\n{text}")
        return Inbound(
            channel=CHANNEL,
            external_id=str(item.meta.get(INTAKE_KEY) or item.external_id),
            sender=Identity(IdentityKind.EMAIL, parsed.sender, parsed.sender_name),
            text=(text or parsed.subject)[:MAX_TEXT],
            received_at=item.received_at,
            subject=parsed.subject,
            html=parsed.html[: MAX_TEXT * 4],
            attachments=attachments,
            thread=ThreadHints(message_ids=tuple(parsed.thread_ids), lead_number=parsed.lead_number),
            kind_hint=kind,
            language=language.split("-")[0].lower()[:8],
            own_refs=(parsed.message_id,) if parsed.message_id else (),
            meta={
                "recipient": recipient,
                "automatic": parsed.automatic,
                "message_id": parsed.message_id,
            },
        )
