"""`GET /metrics` in the Prometheus text format.

Counters and the first-response histogram count what this process saw on the event bus
(Prometheus sums them across instances); gauges are read from the store at scrape time, so
every instance reports the same open/breached/outbox figures.

Unauthenticated by default (the Prometheus convention: keep it on an internal network); with
`web.metrics_token` (HUB_METRICS_TOKEN) set, a scrape needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hub.domain import Event, EventType, Lead
from hub.web.keys import HUB_KEY
from storage.base import StoreError

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from hub.app import Hub

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: First-response buckets in seconds: 1 min .. 2 days (SLA targets are hours).
FIRST_RESPONSE_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 43200, 86400, 172800)


class _Snapshot(Collector):
    """Gauges gathered asynchronously before a scrape, exposed synchronously to the registry."""

    def __init__(self) -> None:
        self.metrics: list[Metric] = []

    def collect(self) -> list[Metric]:
        return self.metrics


class HubMetrics:
    """The hub's metrics registry (one per web app, so tests with several hubs do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.leads_created = Counter(
            "hub_leads_created",
            "Leads opened by this process, by channel and kind",
            ["channel", "kind"],
            registry=self.registry,
        )
        self.first_response = Histogram(
            "hub_first_response_seconds",
            "Time from a lead's creation to its first staff reply",
            ["kind"],
            buckets=FIRST_RESPONSE_BUCKETS,
            registry=self.registry,
        )
        self.sla_events = Counter(
            "hub_sla_events",
            "SLA warnings, breaches and escalations marked by this process",
            ["type"],
            registry=self.registry,
        )
        self.delivery_failures = Counter(
            "hub_delivery_failures", "Outbound deliveries that failed", ["channel"], registry=self.registry
        )
        self._snapshot = _Snapshot()
        self.registry.register(self._snapshot)

    async def on_event(self, event: Event, lead: Lead | None) -> None:
        """Bus subscriber: count what happens."""
        if event.type == EventType.LEAD_CREATED and lead is not None:
            self.leads_created.labels(lead.channel, lead.kind.value).inc()
        elif event.type == EventType.REPLY_RECORDED and lead is not None:
            # Only the reply that stopped the clock: its time is the lead's first response.
            if lead.first_response_at is not None and lead.first_response_at == event.at:
                seconds = (lead.first_response_at - lead.created_at).total_seconds()
                self.first_response.labels(lead.kind.value).observe(max(seconds, 0.0))
        elif event.type in (EventType.SLA_WARNING, EventType.SLA_BREACHED, EventType.SLA_ESCALATED):
            self.sla_events.labels(event.type).inc()
        elif event.type == EventType.DELIVERY_FAILED:
            channel = str(event.data.get("channel") or (lead.channel if lead else "unknown"))
            self.delivery_failures.labels(channel).inc()

    async def refresh(self, hub: Hub) -> None:
        """Read the gauges; while the store is down, only the ones that say so.

        A scrape must still answer then: `hub_store_up 0` is what an alert waits for, and a
        failed store read (a MongoDB server that is gone waits out server selection first)
        would turn the whole scrape into an error instead.
        """
        channels = GaugeMetricFamily(
            "hub_channel_connected", "1 while a channel is connected to its server", labels=["channel"]
        )
        for state in hub.channel_states.snapshot():
            channels.add_metric([state.name], 1 if state.connected else 0)
        up = await hub.store.ping()
        from_store: list[Metric] = []
        if up:
            try:
                from_store = await self._store_gauges(hub)
            except StoreError as exc:
                log.warning("metrics: the store did not answer: %s", exc)
                up = False
        store_up = GaugeMetricFamily("hub_store_up", "1 while the database answers")
        store_up.add_metric([], 1 if up else 0)
        self._snapshot.metrics = [*from_store, channels, store_up]

    @staticmethod
    async def _store_gauges(hub: Hub) -> list[Metric]:
        open_leads = GaugeMetricFamily("hub_leads_open", "Active leads by team", labels=["team"])
        breached = GaugeMetricFamily(
            "hub_leads_breached_open", "Active leads past their first-response due time", labels=["team"]
        )
        by_team: dict[str, list[int]] = {}
        for team, is_breached, count in await hub.store.active_counts():
            totals = by_team.setdefault(team or "", [0, 0])
            totals[0] += count
            if is_breached:
                totals[1] += count
        for team, (total, late) in sorted(by_team.items()):
            open_leads.add_metric([team], total)
            breached.add_metric([team], late)
        outbox = GaugeMetricFamily("hub_outbox_rows", "Outbox rows by delivery state", labels=["state"])
        for state_name, count in sorted((await hub.store.outbox_counts()).items()):
            outbox.add_metric([state_name], count)
        return [open_leads, breached, outbox]


METRICS_KEY: web.AppKey[HubMetrics] = web.AppKey("metrics")


def _authorized(request: web.Request, hub: Hub) -> bool:
    configured = hub.settings.web.metrics_token
    expected = configured.get_secret_value() if configured is not None else ""
    if not expected:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Both sides compared as bytes in constant time: a timing difference must not reveal a prefix.
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode())


async def metrics_view(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus exposition; needs the bearer token when `web.metrics_token` is set."""
    hub = request.app[HUB_KEY]
    if not _authorized(request, hub):
        return web.Response(
            status=401,
            text="missing or wrong bearer token for /metrics\n",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    metrics = request.app[METRICS_KEY]
    await metrics.refresh(hub)
    body = generate_latest(metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def setup_metrics(app: web.Application) -> None:
    """Register /metrics and subscribe the counters to the hub's events."""
    hub = app[HUB_KEY]
    metrics = HubMetrics()
    app[METRICS_KEY] = metrics
    hub.bus.subscribe(f"metrics:{id(app)}", metrics.on_event)
    app.router.add_get("/metrics", metrics_view)
