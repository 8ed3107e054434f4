"""MongoDB documents for the generalised SLA clock, checked offline (no server needed)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
from bson.codec_options import CodecOptions
from pymongo import ReturnDocument

from hub.domain import Lead, LeadKind, LeadStatus
from storage import mongo_kpi
from storage.base import LeadChanges
from storage.mongo import MongoStore, _lead, _lead_doc, lead_update, marks_kept_by_pause

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CODEC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True, tzinfo=UTC)


def sla_lead(**kw: Any) -> Lead:
    fields: dict[str, Any] = {
        "number": 7,
        "kind": LeadKind.MESSAGE,
        "channel": "webform",
        "contact_id": "c1",
        "status": LeadStatus.NEW,
        "created_at": T0,
        "updated_at": T0,
        "origin_external_id": "f:1",
        "first_response_due": T0 + timedelta(hours=4),
        "warn_due": T0 + timedelta(hours=3),
        "sla_target": "first_response",
        "sla_started_at": T0,
        "sla_due": T0 + timedelta(hours=4),
        "sla_warn_due": T0 + timedelta(hours=3),
        "resolution_due": T0 + timedelta(days=1),
        "resolution_warn_due": T0 + timedelta(hours=19),
    }
    fields.update(kw)
    return Lead(**fields)


def test_new_lead_arms_response_and_resolution_marks_and_round_trips() -> None:
    lead = sla_lead()
    doc = bson.decode(bson.encode(_lead_doc(lead)), codec_options=CODEC)
    assert doc["breach_pending_at"] == lead.sla_due and doc["warn_pending_at"] == lead.sla_warn_due
    assert doc["res_breach_pending_at"] == lead.resolution_due
    assert "sla_paused_at" not in doc
    assert _lead(doc) == lead


def test_paused_lead_has_no_armed_resolution_marks() -> None:
    doc = _lead_doc(sla_lead(sla_paused_at=T0, status=LeadStatus.WAITING_CUSTOMER, sla_target=None))
    assert doc["res_breach_pending_at"] is None and doc["sla_paused_at"] == T0


def test_reply_clears_the_response_target_and_pauses_with_min() -> None:
    update = lead_update(
        LeadChanges(status=LeadStatus.WAITING_CUSTOMER, clear_sla=True, pause_sla=True, updated_at=T0)
    )
    assert update["$set"]["sla_target"] is None
    assert update["$set"]["res_breach_pending_at"] is None
    assert set(update["$unset"]) == {"breach_pending_at", "warn_pending_at"}
    assert update["$min"] == {"sla_paused_at": T0}
    bson.encode(update)


def test_a_pause_keeps_the_resolution_marks_already_passed() -> None:
    current = {"res_breach_pending_at": T0, "res_warn_pending_at": T0 - timedelta(hours=1)}
    assert marks_kept_by_pause(current, T0) == current
    assert marks_kept_by_pause(current, T0 - timedelta(minutes=1)) == {
        "res_warn_pending_at": current["res_warn_pending_at"]
    }
    assert marks_kept_by_pause({"res_breach_pending_at": None}, T0) == {}
    kept = {"res_warn_pending_at": T0 - timedelta(hours=1)}
    update = lead_update(LeadChanges(pause_sla=True, updated_at=T0), kept)
    assert update["$set"]["res_warn_pending_at"] == kept["res_warn_pending_at"]
    assert update["$set"]["res_breach_pending_at"] is None
    # A lead that stops (resolved) keeps no mark, passed or not.
    stopped = lead_update(LeadChanges(status=LeadStatus.RESOLVED, pause_sla=True, updated_at=T0), kept)
    assert stopped["$set"]["res_warn_pending_at"] is None


class _Leads:
    """One lead document with just enough of a collection for a pausing update_lead."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.before_write: list[dict[str, Any]] = []  # changes "another process" makes first

    async def find_one(
        self, match: Mapping[str, Any], projection: Any = None, **_: Any
    ) -> dict[str, Any] | None:
        return dict(self.doc) if self.doc["_id"] == match["_id"] else None

    async def find_one_and_update(
        self, match: Mapping[str, Any], update: Mapping[str, Any], return_document: Any = None, **_: Any
    ) -> dict[str, Any] | None:
        if self.before_write:
            self.doc.update(self.before_write.pop(0))
        if any(self.doc.get(k) != v for k, v in match.items()):
            return None
        before = dict(self.doc)
        self.doc.update(update["$set"])
        for key in update.get("$unset", {}):
            self.doc.pop(key, None)
        for key, value in update.get("$min", {}).items():
            self.doc[key] = min(self.doc.get(key, value), value)
        return before if return_document == ReturnDocument.BEFORE else dict(self.doc)


async def test_a_pause_never_arms_a_mark_a_sweep_claimed_meanwhile() -> None:
    breach = T0 + timedelta(hours=1)
    base = {**_lead_doc(sla_lead(resolution_due=breach)), "res_warn_pending_at": None}
    leads = _Leads(dict(base))
    # Between the adapter's read and its write a sweep claims the passed breach.
    leads.before_write.append({"res_breach_pending_at": None, "res_breached_at": breach})
    store = MongoStore("mongodb://127.0.0.1:1/hub")
    store._db = {"leads": leads}  # type: ignore[assignment]
    assert not mongo_kpi.touches_kpi(lead_update(LeadChanges(pause_sla=True, updated_at=T0)))
    await store.update_lead(7, LeadChanges(pause_sla=True, updated_at=T0 + timedelta(hours=2)))
    assert leads.doc["res_breach_pending_at"] is None  # not armed again: it was reported once
    assert leads.doc["sla_paused_at"] == T0 + timedelta(hours=2)
    # Unclaimed, the passed mark stays armed for the next sweep.
    leads.doc = dict(base)
    await store.update_lead(7, LeadChanges(pause_sla=True, updated_at=T0 + timedelta(hours=2)))
    assert leads.doc["res_breach_pending_at"] == breach


async def test_a_first_response_never_replaces_an_earlier_one() -> None:
    leads = _Leads(_lead_doc(sla_lead()))
    store = MongoStore("mongodb://127.0.0.1:1/hub")
    store._db = {"leads": leads}  # type: ignore[assignment]

    async def no_rollups(*_: Any) -> None:
        """A first response moves the KPI rollups; this fake collection has none."""

    store._kpi_follow = no_rollups  # type: ignore[method-assign]
    early, late = T0 + timedelta(minutes=5), T0 + timedelta(minutes=9)
    # The earlier reply's write lands first: the later one, which read the lead unanswered too,
    # must not move the first response (the later time won).
    await store.update_lead(7, LeadChanges(first_response_at=early, updated_at=early))
    answered = await store.update_lead(7, LeadChanges(first_response_at=late, updated_at=late))
    assert answered is not None and answered.first_response_at == early
    # The other order, and a reply landing between the adapter's read and its write.
    leads.doc = _lead_doc(sla_lead())
    await store.update_lead(7, LeadChanges(first_response_at=late, updated_at=late))
    leads.before_write.append({"first_response_at": T0 + timedelta(minutes=1)})
    answered = await store.update_lead(7, LeadChanges(first_response_at=early, updated_at=early))
    assert answered is not None and answered.first_response_at == T0 + timedelta(minutes=1)


def test_resume_sets_new_due_times_and_unsets_the_pause() -> None:
    due = T0 + timedelta(days=2)
    update = lead_update(LeadChanges(clear_sla_paused=True, resolution_due=due, updated_at=T0))
    assert update["$set"]["res_breach_pending_at"] == due and update["$set"]["res_warn_pending_at"] is None
    assert update["$unset"] == {"sla_paused_at": ""}
    assert not set(update["$set"]) & set(update["$unset"])


def test_escalation_step_is_armed_and_disarmed_by_a_reply() -> None:
    at = T0 + timedelta(hours=2)
    armed = lead_update(LeadChanges(escalate_at=at, escalate_target="next_response", updated_at=T0))
    assert armed["$set"]["escalate_pending_at"] == at and armed["$set"]["escalate_target"] == "next_response"
    # The resolution target's step has its own slot: it does not replace a response step.
    resolution = lead_update(LeadChanges(escalate_at=at, escalate_target="resolution", updated_at=T0))
    assert resolution["$set"]["res_escalate_pending_at"] == at
    assert "escalate_pending_at" not in resolution["$set"]
    replied = lead_update(LeadChanges(clear_sla=True, updated_at=T0))
    assert replied["$set"]["escalate_pending_at"] is None
    assert "res_escalate_pending_at" not in replied["$set"]
    resolved = lead_update(LeadChanges(status=LeadStatus.RESOLVED, updated_at=T0))
    assert (
        resolved["$set"]["escalate_pending_at"] is None
        and resolved["$set"]["res_escalate_pending_at"] is None
    )


def test_episode_marks_round_trip_and_a_new_episode_forgets_them() -> None:
    lead = sla_lead(sla_warned_at=T0, sla_breached_at=T0, res_warned_at=T0, res_breached_at=T0)
    assert _lead(bson.decode(bson.encode(_lead_doc(lead)), codec_options=CODEC)) == lead
    recomputed = lead_update(LeadChanges(sla_due=T0 + timedelta(hours=5), updated_at=T0))
    assert not {"sla_warned_at", "sla_breached_at", "res_warned_at", "res_breached_at"} & set(
        recomputed["$set"]
    )
    started = lead_update(
        LeadChanges(
            sla_started_at=T0, sla_due=T0 + timedelta(hours=2), restart_resolution=True, updated_at=T0
        )
    )
    for mark in ("sla_warned_at", "sla_breached_at", "res_warned_at", "res_breached_at"):
        assert started["$set"][mark] is None


async def test_an_update_with_expected_matches_the_sla_state_it_was_computed_from() -> None:
    leads = _Leads(_lead_doc(sla_lead()))
    read = _lead(bson.decode(bson.encode(leads.doc), codec_options=CODEC))
    # A sweep in another process claims the breach between the read and the write.
    claimed = T0 + timedelta(hours=5)
    leads.before_write.append({"sla_breached_at": claimed, "breached_at": claimed})
    store = MongoStore("mongodb://127.0.0.1:1/hub")
    store._db = {"leads": leads}  # type: ignore[assignment]
    later = LeadChanges(sla_due=T0 + timedelta(hours=8), sla_warn_due=None, updated_at=claimed)
    assert await store.update_lead(7, later, expected=read) is None
    assert leads.doc["sla_due"] == T0 + timedelta(hours=4) and leads.doc[
        "breach_pending_at"
    ] == T0 + timedelta(hours=4)
    # Computed from the lead as it now is, the write applies.
    fresh = _lead(leads.doc)
    written = await store.update_lead(7, later, expected=fresh)
    assert (
        written is not None
        and written.sla_due == T0 + timedelta(hours=8)
        and written.sla_breached_at == claimed
    )
