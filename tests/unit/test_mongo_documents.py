"""The MongoDB adapter's document mapping, checked through the real BSON codec (no server needed).

The adapter's behaviour is proved by tests/contract when HUB_TEST_MONGODB_URL is set; these
tests keep the pure parts honest on machines without a MongoDB server.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
from bson.codec_options import CodecOptions

from hub.domain import Attachment, DeliveryState, Direction, Lead, LeadKind, LeadStatus, Message
from storage.base import LeadChanges
from storage.mongo import _lead, _lead_doc, _message, _message_doc, lead_update

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CODEC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True, tzinfo=UTC)


def through_bson(doc: dict[str, Any]) -> dict[str, Any]:
    return bson.decode(bson.encode(doc), codec_options=CODEC)


def make_lead(**kw: Any) -> Lead:
    fields: dict[str, Any] = {
        "number": 12,
        "kind": LeadKind.SERVICE_REQUEST,
        "channel": "email",
        "contact_id": "c1",
        "status": LeadStatus.OPEN,
        "created_at": T0,
        "updated_at": T0,
        "subject": "Бойлер",
        "tags": ["vip"],
        "origin_external_id": "imap:1",
        "first_response_due": T0 + timedelta(hours=12),
        "warn_due": T0 + timedelta(hours=9),
    }
    fields.update(kw)
    return Lead(**fields)


def test_lead_round_trips_through_bson_with_pending_marks() -> None:
    lead = make_lead()
    doc = through_bson(_lead_doc(lead))
    assert _lead(doc) == lead
    assert doc["breach_pending_at"] == lead.first_response_due
    assert doc["warn_pending_at"] == lead.warn_due
    assert _lead(doc).created_at.tzinfo is not None


def test_answered_or_breached_leads_carry_no_pending_marks() -> None:
    for lead in (
        make_lead(first_response_at=T0 + timedelta(minutes=5)),
        make_lead(breached_at=T0 + timedelta(hours=12), warned_at=T0 + timedelta(hours=9)),
        make_lead(first_response_due=None, warn_due=None),
    ):
        doc = _lead_doc(lead)
        assert "breach_pending_at" not in doc and "warn_pending_at" not in doc
    warned = _lead_doc(make_lead(warned_at=T0 + timedelta(hours=9)))
    assert "warn_pending_at" not in warned and "breach_pending_at" in warned


def test_message_round_trips_and_omits_a_missing_external_id() -> None:
    message = Message(
        id="m1",
        lead_number=12,
        direction=Direction.OUT,
        channel="email",
        author="olena",
        text="Доброго дня",
        created_at=T0,
        attachments=[Attachment("a.pdf", "application/pdf", 10, "sha256:x")],
        refs=["<a@x>"],
        delivery=DeliveryState.QUEUED,
    )
    doc = through_bson(_message_doc(message, seq=3))
    assert "external_id" not in doc
    assert _message(doc) == message
    with_id = Message(**{**{f: getattr(message, f) for f in message.__slots__}, "external_id": "<a@x>"})
    assert _message(through_bson(_message_doc(with_id, seq=4))).external_id == "<a@x>"


def test_lead_update_sets_and_unsets_without_overlap() -> None:
    answered = lead_update(LeadChanges(first_response_at=T0, updated_at=T0))
    assert answered["$set"] == {"first_response_at": T0, "updated_at": T0}
    assert answered["$unset"] == {"breach_pending_at": "", "warn_pending_at": ""}

    rearmed = lead_update(LeadChanges(first_response_due=T0, warn_due=T0, clear_due=True, updated_at=T0))
    assert rearmed["$set"]["breach_pending_at"] == T0 and rearmed["$set"]["warn_pending_at"] == T0
    assert rearmed["$set"]["breached_at"] is None and rearmed["$set"]["warned_at"] is None
    assert "$unset" not in rearmed

    resolved = lead_update(
        LeadChanges(status=LeadStatus.RESOLVED, resolved_at=T0, clear_assignee=True, extra={"k": (1, 2)})
    )
    assert resolved["$set"]["status"] == "resolved" and resolved["$set"]["assignee"] is None
    assert resolved["$set"]["extra.k"] == [1, 2]
    assert set(resolved["$unset"]) == {"breach_pending_at", "warn_pending_at"}
    for update in (answered, rearmed, resolved):
        assert not set(update["$set"]) & set(update.get("$unset", {}))
        through_bson(update)  # every value is BSON-encodable


def test_open_waiting_status_keeps_the_clock() -> None:
    update = lead_update(LeadChanges(status=LeadStatus.WAITING_CUSTOMER, updated_at=T0))
    assert update == {"$set": {"status": "waiting_customer", "updated_at": T0}}


def test_text_search_pattern_is_literal_and_case_folded() -> None:
    from storage.mongo import _contains

    doc = _lead_doc(make_lead(subject="Не працює БОЙЛЕР, 50% .* off"))
    for text, hit in [
        ("бойлер", True),
        ("Бойлер", True),
        ("50%", True),
        (".*", True),
        ("a.b", False),
        ("_", False),
    ]:
        pattern = _contains(text)
        assert set(pattern) == {"$regex"}
        assert (re.search(pattern["$regex"], doc["subject_folded"]) is not None) is hit, text
