"""Typed, validated settings from `config.yaml`, with `HUB_*` environment overrides.

A bad config stops the hub with a message naming the key and the problem (`ConfigError`).
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from hub.domain import LeadKind, Role

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and what to fix."""


#: The longest duration a setting may have (ten years).
MAX_DURATION = timedelta(days=3650)


def parse_duration(value: Any) -> timedelta:
    """`90s`, `15m`, `4h`, `2d` (or a number of seconds) -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(f"invalid duration {value!r}: use a number with s, m, h or d, e.g. 90s, 15m, 4h, 2d")
    if seconds != seconds or seconds <= 0:  # NaN compares unequal to itself
        raise ValueError(f"duration {value!r} must be positive")
    if seconds > MAX_DURATION.total_seconds():
        # Due times are now + duration: past this, datetime overflows (500 on every form).
        raise ValueError(f"duration {value!r} is too long: use at most {MAX_DURATION.days}d")
    return timedelta(seconds=seconds)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class RateLimit(BaseModel):
    """`10/m` means ten per minute; `0` turns the limit off."""

    model_config = ConfigDict(frozen=True)
    count: int
    per_seconds: float

    @property
    def enabled(self) -> bool:
        return self.count > 0


def parse_rate_limit(value: Any) -> RateLimit:
    if isinstance(value, RateLimit):
        return value
    if value in (0, "0", None, "off"):
        return RateLimit(count=0, per_seconds=1)
    if isinstance(value, str):
        match = re.match(r"^\s*(\d+)\s*/\s*(\d*)\s*(s|m|h|d)\s*$", value)
        if match:
            count, mult, unit = int(match.group(1)), match.group(2), match.group(3)
            window = _UNITS[unit] * (int(mult) if mult else 1)
            # A zero window (`10/0m`) would never limit anything: refused rather than silently off.
            if window > 0:
                return RateLimit(count=count, per_seconds=window)
    raise ValueError(f"invalid rate limit {value!r}: use COUNT/UNIT such as 10/m, or 0 to turn it off")


RateLimitSetting = Annotated[RateLimit, BeforeValidator(parse_rate_limit)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _http_url(value: str) -> str:
    """An absolute http(s) URL (what customers, Telegram or a webhook receiver are sent to)."""
    if not re.match(r"^https?://[^/\s?#]+", value) or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]


def _stripped_or_unset(value: Any) -> Any:
    # Surrounding whitespace (`HUB_API_TOKEN="tok "`, a line copied with its newline) is never
    # part of a key: kept, no client could ever send it (the API strips what it is given).
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not isinstance(value, str):
        return value
    return value.strip() or None


#: The shortest bearer token taken: anything shorter is guessable, or a placeholder left in.
MIN_TOKEN_CHARS = 16


def _long_enough(value: SecretStr | None) -> SecretStr | None:
    if value is not None and len(value.get_secret_value()) < MIN_TOKEN_CHARS:
        # The token itself stays out of the message: config errors are logged.
        raise ValueError(
            f"too short ({len(value.get_secret_value())} characters): a bearer token needs at least "
            f"{MIN_TOKEN_CHARS} (e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    return value


#: A token or key that authenticates or signs: a blank one is no key at all (it would let
#: anyone sending `Authorization: Bearer ` in, or sign with an empty HMAC key), so it is unset.
Key = Annotated[SecretStr | None, BeforeValidator(_stripped_or_unset)]
#: A token clients send as `Authorization: Bearer <token>`: a Key of at least MIN_TOKEN_CHARS.
BearerToken = Annotated[SecretStr | None, BeforeValidator(_stripped_or_unset), AfterValidator(_long_enough)]
#: A TCP port to connect to (0 means "any free port" only for a port we listen on).
RemotePort = Annotated[int, Field(ge=1, le=65535)]


class StorageSettings(_Section):
    url: str = "sqlite:///data/hub.db"

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "mongodb://", "mongodb+srv://")):
            raise ValueError("must start with sqlite:///PATH, mongodb:// or mongodb+srv://")
        return value

    @property
    def backend(self) -> Literal["sqlite", "mongo"]:
        return "sqlite" if self.url.startswith("sqlite") else "mongo"


class WebSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str = ""  # how customers reach us, for links in acknowledgements
    form_rate_limit: RateLimitSetting = Field(default_factory=lambda: parse_rate_limit("10/m"))
    trusted_proxies: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(256 * 1024, ge=1024)
    secret_key: Key = None  # HUB_SECRET_KEY: signs sessions and links
    # Dashboard sign-in tries: per client IP, and per manager id (whatever the address).
    login_rate_limit: RateLimitSetting = Field(default_factory=lambda: parse_rate_limit("10/m"))
    login_manager_rate_limit: RateLimitSetting = Field(default_factory=lambda: parse_rate_limit("5/m"))
    metrics_token: BearerToken = None  # HUB_METRICS_TOKEN: when set, /metrics needs it
    # Several hub processes on one host and port (SO_REUSEPORT: the kernel spreads connections).
    reuse_port: bool = False

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        # Sign-in links and Telegram's setWebhook are built on it: a bare host name makes both wrong.
        return _http_url(value) if value else value


class ApiSettings(_Section):
    token: BearerToken = None  # HUB_API_TOKEN


class FormSettings(_Section):
    kind: LeadKind = LeadKind.MESSAGE
    title: str = ""
    team: str | None = None


class WorkingHours(_Section):
    timezone: str = "Europe/Kyiv"
    hours: str | dict[str, list[str]] = "24x7"


class ManagerSettings(_Section):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    name: str
    role: Role = Role.AGENT
    teams: list[str] = Field(default_factory=list)
    telegram_id: int | None = None
    email: str | None = None
    skills: list[str] = Field(default_factory=list)
    capacity: int = Field(25, ge=0)
    active: bool = True
    working_hours: WorkingHours | None = None
    password_hash: str | None = None  # argon2 hash, for dashboard sign-in


class TeamSettings(_Section):
    strategy: Literal["least_loaded", "round_robin", "sticky"] = "least_loaded"
    fallback: str | None = None
    staff_group_id: int | None = None


class RuleMatch(_Section):
    channel: str | list[str] | None = None
    kind: LeadKind | None = None
    form: str | list[str] | None = None
    keywords: list[str] = Field(default_factory=list)
    recipient: str | list[str] | None = None  # the address the customer wrote to (email)
    language: str | list[str] | None = None  # the customer's language, e.g. uk, ru, en
    contact_tags: list[str] = Field(default_factory=list)  # any of these tags on the contact


class RoutingRule(_Section):
    name: str = ""
    match: RuleMatch = Field(default_factory=RuleMatch)
    team: str
    priority: int = 0
    tags: list[str] = Field(default_factory=list)


class RoutingSettings(_Section):
    default_team: str | None = None
    rules: list[RoutingRule] = Field(default_factory=list)
    reassign_when_away: bool = False  # /away hands the manager's open leads to others
    drain_every: Duration = Field(default_factory=lambda: timedelta(seconds=60))  # shift starts


class CalendarSettings(_Section):
    timezone: str = "Europe/Kyiv"
    hours: str | dict[str, list[str]] = "24x7"
    holidays: dict[str, Any] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Europe/Kyiv)") from exc
        return value


SLA_TARGETS = ("first_response", "next_response", "resolution")


class SlaEscalation(_Section):
    """Who hears about a breach: the assignee, then the team's leads; optionally reassign.

    With `team_lead_after`, the team's leads (and the reassignment) come that long after the
    breach, as an `sla.escalated` event, unless the lead was answered or resolved meanwhile.
    """

    notify_assignee: bool = True
    notify_team_lead: bool = True
    reassign: bool = False
    team_lead_after: Duration | None = None


def _split_targets(data: Any) -> Any:
    """`first_response: {after: 4h, warn_at: 0.9}` -> the duration plus a per-target warn_at."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    warn = dict(data.get("target_warn_at") or {})
    for target in SLA_TARGETS:
        value = data.get(target)
        if isinstance(value, dict):
            unknown = set(value) - {"after", "warn_at"}
            if unknown:
                raise ValueError(
                    f"{target}: unknown key(s) {', '.join(sorted(unknown))} (use after, warn_at)"
                )
            if "after" not in value:
                raise ValueError(f"{target}: needs 'after', e.g. {{after: 4h, warn_at: 0.8}}")
            data[target] = value["after"]
            if "warn_at" in value:
                warn[target] = value["warn_at"]
    if warn:
        data["target_warn_at"] = warn
    return data


class SlaOverride(_Section):
    """A team's or a priority's changes to a kind's policy (unset keys keep the kind's value)."""

    first_response: Duration | None = None
    next_response: Duration | None = None
    resolution: Duration | None = None
    warn_at: float | None = Field(None, gt=0, lt=1)
    target_warn_at: dict[Literal["first_response", "next_response", "resolution"], float] = Field(
        default_factory=dict
    )
    escalation: SlaEscalation | None = None

    @model_validator(mode="before")
    @classmethod
    def _targets(cls, data: Any) -> Any:
        return _split_targets(data)


class SlaPolicy(_Section):
    first_response: Duration
    warn_at: float = Field(0.8, gt=0, lt=1)
    next_response: Duration | None = None  # after the customer writes again on an open lead
    resolution: Duration | None = None  # paused while waiting for the customer
    target_warn_at: dict[Literal["first_response", "next_response", "resolution"], float] = Field(
        default_factory=dict
    )
    escalation: SlaEscalation = Field(default_factory=SlaEscalation)
    teams: dict[str, SlaOverride] = Field(default_factory=dict)
    priorities: dict[int, SlaOverride] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _targets(cls, data: Any) -> Any:
        return _split_targets(data)

    @field_validator("target_warn_at")
    @classmethod
    def _fractions(cls, value: dict[str, float]) -> dict[str, float]:
        for target, fraction in value.items():
            if not 0 < fraction < 1:
                raise ValueError(f"{target}.warn_at must be between 0 and 1 (exclusive), got {fraction}")
        return value


class SlaSettings(_Section):
    check_every: Duration = Field(default_factory=lambda: timedelta(seconds=30))
    calendar: CalendarSettings = Field(default_factory=CalendarSettings)
    policies: dict[LeadKind, SlaPolicy] = Field(
        default_factory=lambda: {
            LeadKind.MESSAGE: SlaPolicy(first_response=timedelta(hours=4)),
            LeadKind.SERVICE_REQUEST: SlaPolicy(first_response=timedelta(hours=12)),
        }
    )

    @model_validator(mode="after")
    def _every_kind_has_a_policy(self) -> SlaSettings:
        missing = [kind.value for kind in LeadKind if kind not in self.policies]
        if missing:
            raise ValueError(f"sla.policies lacks a policy for: {', '.join(missing)}")
        return self


class ImapSettings(_Section):
    host: str = "127.0.0.1"
    port: RemotePort = 993
    security: Literal["ssl", "starttls", "plain"] = "ssl"
    username: str = "support"
    password: SecretStr | None = None  # HUB_IMAP_PASSWORD
    mailbox: str = "INBOX"
    poll_every: Duration = Field(default_factory=lambda: timedelta(seconds=60))
    move_to: str | None = None
    verify_tls: bool = True
    idle: bool = True  # use IDLE when the server offers it; poll every `poll_every` otherwise
    timeout: Duration = Field(default_factory=lambda: timedelta(seconds=30))
    reconnect_max: Duration = Field(default_factory=lambda: timedelta(minutes=5))
    # aioimaplib parses a received chunk recursively (a frame per line): many tiny messages in one
    # FETCH can exceed Python's recursion limit, so batches stay small.
    fetch_batch: int = Field(100, ge=1, le=200)
    # First sight of a mailbox: unread mail older than this stays where it is (a shared mailbox
    # with months of unread mail would become that many leads, acknowledgements and breaches);
    # null takes every unread message.
    first_sync_max_age: Duration | None = Field(default_factory=lambda: timedelta(days=7))


class SmtpSettings(_Section):
    host: str = "127.0.0.1"
    port: RemotePort = 465
    security: Literal["ssl", "starttls", "plain"] = "ssl"
    username: str | None = "support"
    password: SecretStr | None = None  # HUB_SMTP_PASSWORD
    from_: str = Field("Support <support@example.com>", alias="from")
    verify_tls: bool = True
    timeout: Duration = Field(default_factory=lambda: timedelta(seconds=30))

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class EmailSettings(_Section):
    enabled: bool = False
    imap: ImapSettings = Field(default_factory=ImapSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    max_attachment_bytes: int = Field(10 * 1024 * 1024, ge=0)
    kinds: dict[str, LeadKind] = Field(default_factory=dict)  # recipient/keyword -> kind
    ack: bool = True
    # Keys of `kinds`: an address (`service@example.com`, or `service@` for any domain), a plus
    # tag (`+service`), or anything else: a word looked for in the subject.
    account: str = ""  # names the mailbox in external ids and leases; default username@host
    attachments_dir: str = "data/attachments"
    ack_rate_limit: RateLimitSetting = Field(default_factory=lambda: parse_rate_limit("3/d"))
    workers: int = Field(16, ge=1, le=256)  # messages of different senders processed at once
    parse_workers: int = Field(1, ge=0, le=16)  # processes that parse the next fetched batch; 0: none
    lease_ttl: Duration = Field(default_factory=lambda: timedelta(seconds=60))


class TelegramLimits(_Section):
    """Bot API flood limits the hub paces itself to (lower them for a local test server)."""

    chat_per_second: float = Field(1.0, gt=0)
    group_per_minute: float = Field(20.0, gt=0)
    global_per_second: float = Field(30.0, gt=0)


class TelegramSettings(_Section):
    enabled: bool = False
    token: SecretStr | None = None  # HUB_TELEGRAM_TOKEN
    mode: Literal["polling", "webhook"] = "polling"
    webhook_secret: Key = None  # HUB_TELEGRAM_WEBHOOK_SECRET
    webhook_path: str = Field("/telegram/webhook", pattern=r"^/[^\s?#]*$")
    api_base: HttpUrl = "https://api.telegram.org"
    staff_group_id: int | None = None
    alerts_chat_id: int | None = None
    bot_username: str = ""
    russian_fallback: Literal["uk", "en"] = "uk"  # language for `ru` users
    poll_timeout: Duration = Field(default_factory=lambda: timedelta(seconds=25))
    poller_lease: Duration = Field(default_factory=lambda: timedelta(seconds=60))
    ack: bool = True  # acknowledge a new lead in the customer's chat
    # Older name of `leads.reopen_within`, still read when that is not set.
    reopen_within: Duration | None = None
    limits: TelegramLimits = Field(default_factory=lambda: TelegramLimits())


class LeadSettings(_Section):
    #: A customer's message on a lead resolved longer ago than this (a reply to a months-old
    #: mail thread, a Telegram message) opens a new lead that names the old one; sooner, it
    #: reopens the old lead. Every channel uses this one window.
    reopen_within: Duration = Field(default_factory=lambda: timedelta(days=7))


class OutboxSettings(_Section):
    poll_every: Duration = Field(default_factory=lambda: timedelta(seconds=2))
    max_attempts: int = Field(8, ge=1)
    backoff_base: Duration = Field(default_factory=lambda: timedelta(seconds=5))
    backoff_max: Duration = Field(default_factory=lambda: timedelta(minutes=30))


class WebhookSettings(_Section):
    """An outgoing JSON POST for alerts (SLA warnings and breaches, unassigned leads)."""

    url: HttpUrl
    events: list[str] = Field(
        default_factory=lambda: ["sla.warning", "sla.breached", "sla.escalated", "routing.nobody_eligible"]
    )
    timeout: Duration = Field(default_factory=lambda: timedelta(seconds=10))
    max_attempts: int = Field(5, ge=1, le=20)
    backoff_base: Duration = Field(default_factory=lambda: timedelta(seconds=1))
    headers: dict[str, str] = Field(default_factory=dict)
    secret: Key = None  # HUB_NOTIFY_WEBHOOK_SECRET: HMAC-SHA256 of the body


class NotifySettings(_Section):
    webhook: WebhookSettings | None = None


class ProcessSettings(_Section):
    """How `hub run` runs: its event loop and the CPUs its threads may use."""

    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # Empty: wherever the OS puts it. One CPU keeps the event loop and the database thread
    # together, which makes every hand-off between them a plain switch instead of a wake-up of
    # another (virtual) CPU; one process is held to about one core by the GIL anyway.
    cpus: list[int] = Field(default_factory=list)

    @field_validator("cpus", mode="before")
    @classmethod
    def _cpu_list(cls, value: Any) -> Any:
        # HUB_CPUS=0 or HUB_CPUS="0,2": the environment only has strings.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, int):
            return [value]
        return value

    @field_validator("cpus")
    @classmethod
    def _cpus_exist(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("a CPU is listed twice")
        if any(cpu < 0 for cpu in value):
            raise ValueError("CPU numbers start at 0")
        return value


class Settings(_Section):
    storage: StorageSettings = Field(default_factory=StorageSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    forms: dict[str, FormSettings] = Field(
        default_factory=lambda: {
            "contact": FormSettings(kind=LeadKind.MESSAGE),
            "service": FormSettings(kind=LeadKind.SERVICE_REQUEST),
        }
    )
    managers: list[ManagerSettings] = Field(default_factory=list)
    teams: dict[str, TeamSettings] = Field(default_factory=dict)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    sla: SlaSettings = Field(default_factory=SlaSettings)
    email: EmailSettings = Field(default_factory=EmailSettings)
    telegram: TelegramSettings = Field(default_factory=TelegramSettings)
    leads: LeadSettings = Field(default_factory=LeadSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    process: ProcessSettings = Field(default_factory=ProcessSettings)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("forms")
    @classmethod
    def _form_ids(cls, value: dict[str, FormSettings]) -> dict[str, FormSettings]:
        for form_id in value:
            if not re.fullmatch(r"[a-z0-9_-]{1,40}", form_id):
                raise ValueError(f"form id {form_id!r}: use 1-40 lowercase letters, digits, - or _")
        return value

    @model_validator(mode="after")
    def _reopen_window(self) -> Settings:
        # A config written when only Telegram had the window keeps its value for every channel.
        legacy = self.telegram.reopen_within
        if legacy is not None and "reopen_within" not in self.leads.model_fields_set:
            self.leads = LeadSettings(reopen_within=legacy)
        return self

    @model_validator(mode="after")
    def _references_resolve(self) -> Settings:
        ids = [m.id for m in self.managers]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"managers: duplicate id(s) {', '.join(duplicates)}")
        for manager in self.managers:
            for team in manager.teams:
                if team not in self.teams:
                    raise ValueError(f"managers[{manager.id}].teams: unknown team {team!r}")
        for i, rule in enumerate(self.routing.rules):
            if rule.team not in self.teams:
                raise ValueError(f"routing.rules[{i}].team: unknown team {rule.team!r}")
        if self.routing.default_team and self.routing.default_team not in self.teams:
            raise ValueError(f"routing.default_team: unknown team {self.routing.default_team!r}")
        for team_name, team_settings in self.teams.items():
            if team_settings.fallback and team_settings.fallback not in self.teams:
                raise ValueError(f"teams.{team_name}.fallback: unknown team {team_settings.fallback!r}")
        for form_id, form in self.forms.items():
            if form.team and form.team not in self.teams:
                raise ValueError(f"forms.{form_id}.team: unknown team {form.team!r}")
        for kind, policy in self.sla.policies.items():
            for team_name in policy.teams:
                if team_name not in self.teams:
                    raise ValueError(f"sla.policies.{kind.value}.teams: unknown team {team_name!r}")
        return self

    def manager(self, manager_id: str) -> ManagerSettings | None:
        return next((m for m in self.managers if m.id == manager_id), None)


#: Environment variable -> dotted key. Secrets live only here, never in config.yaml.
ENV_OVERRIDES: dict[str, str] = {
    "HUB_STORAGE_URL": "storage.url",
    "HUB_WEB_HOST": "web.host",
    "HUB_WEB_PORT": "web.port",
    "HUB_WEB_PUBLIC_URL": "web.public_url",
    "HUB_SECRET_KEY": "web.secret_key",
    "HUB_METRICS_TOKEN": "web.metrics_token",
    "HUB_API_TOKEN": "api.token",
    "HUB_IMAP_HOST": "email.imap.host",
    "HUB_IMAP_PORT": "email.imap.port",
    "HUB_IMAP_PASSWORD": "email.imap.password",
    "HUB_SMTP_HOST": "email.smtp.host",
    "HUB_SMTP_PORT": "email.smtp.port",
    "HUB_SMTP_PASSWORD": "email.smtp.password",
    "HUB_TELEGRAM_TOKEN": "telegram.token",
    "HUB_TELEGRAM_WEBHOOK_SECRET": "telegram.webhook_secret",
    "HUB_TELEGRAM_API_BASE": "telegram.api_base",
    "HUB_LOG_LEVEL": "log_level",
    "HUB_EVENT_LOOP": "process.event_loop",
    "HUB_CPUS": "process.cpus",
    "HUB_NOTIFY_WEBHOOK_SECRET": "notify.webhook.secret",
}


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[leaf] = value


#: Sections that are off unless config.yaml has them: a secret for one of them in the
#: environment (a shared .env) configures nothing, so it does not create the section.
_OPTIONAL_SECTIONS = ("notify.webhook",)


def _has_dotted(data: dict[str, Any], dotted: str) -> bool:
    node: Any = data
    for key in dotted.split("."):
        if not isinstance(node, dict) or not isinstance(node.get(key), dict):
            return False
        node = node[key]
    return True


def _format_error(exc: ValidationError, from_env: dict[str, str]) -> str:
    """`key: problem; ...`, naming the environment variable a value came from (the operator
    would look for it in config.yaml otherwise)."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        source = next((var for var, dotted in from_env.items() if f"{key}.".startswith(f"{dotted}.")), None)
        lines.append(f"{key} (from {source}): {message}" if source else f"{key}: {message}")
    return "; ".join(lines)


def settings_from_dict(data: dict[str, Any], env: dict[str, str] | None = None) -> Settings:
    """Validate a config mapping, applying `HUB_*` overrides from `env` (default: os.environ)."""
    env = dict(os.environ if env is None else env)
    merged: dict[str, Any] = _deep_copy(data)
    from_env: dict[str, str] = {}
    for var, dotted in ENV_OVERRIDES.items():
        if not env.get(var):
            continue
        section = next((s for s in _OPTIONAL_SECTIONS if dotted.startswith(f"{s}.")), None)
        if section is not None and not _has_dotted(merged, section):
            continue
        _set_dotted(merged, dotted, env[var])
        from_env[var] = dotted
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, from_env)) from exc
    _check_calendars(settings)
    return settings


def _check_calendars(settings: Settings) -> None:
    """Parse every calendar now, so `check-config` and start-up name a bad key the same way."""
    from hub.business_hours import BusinessHours, parse_weekly_hours  # builds on these types

    BusinessHours.from_settings(settings.sla.calendar)
    for manager in settings.managers:
        hours = manager.working_hours
        if hours is not None:
            key = f"managers[{manager.id}].working_hours"
            try:
                BusinessHours(hours.timezone, parse_weekly_hours(hours.hours, f"{key}.hours"))
            except (ValueError, KeyError) as exc:  # ZoneInfoNotFoundError is a KeyError
                raise ConfigError(f"{key}.timezone: unknown time zone {hours.timezone!r}") from exc


def check_startable(settings: Settings) -> None:
    """What `hub run` would refuse at start-up, checked up front: `hub check-config` and
    `hub run` both call this, so a config that passes one is not refused by the other.

    Raises ConfigError naming the key. Some checks depend on this host (process.cpus).
    """
    url = settings.storage.url
    if settings.storage.backend == "sqlite" and not url.removeprefix("sqlite:///").partition("?")[0]:
        raise ConfigError(f"storage.url: {url!r} has no file path (use e.g. sqlite:///data/hub.db)")
    telegram = settings.telegram
    if telegram.enabled:
        token = telegram.token.get_secret_value().strip() if telegram.token is not None else ""
        if not token:
            raise ConfigError("telegram.token: set HUB_TELEGRAM_TOKEN (telegram.enabled is true)")
        if not token.split(":", 1)[0].isdigit():
            raise ConfigError("telegram.token: not a bot token (expected <bot id>:<secret>)")
        if telegram.mode == "webhook" and not (
            telegram.webhook_secret and telegram.webhook_secret.get_secret_value()
        ):
            raise ConfigError("telegram.webhook_secret: webhook mode needs HUB_TELEGRAM_WEBHOOK_SECRET")
    if settings.email.enabled:
        if not settings.email.imap.host.strip():
            raise ConfigError("email.imap.host: empty (set the IMAP server's host name, or HUB_IMAP_HOST)")
        if not settings.email.smtp.host.strip():
            raise ConfigError("email.smtp.host: empty (set the SMTP server's host name, or HUB_SMTP_HOST)")
    from hub.process import check_cpus  # hub.process builds on this module

    check_cpus(settings.process.cpus)


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"line {line}: the key {key!r} is given twice")
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last one
    silently, so a second `telegram:` section would quietly replace the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_settings(path: str | Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Read and validate the YAML config at `path` (default: HUB_CONFIG or ./config.yaml)."""
    env_map = dict(os.environ if env is None else env)
    config_path = Path(path or env_map.get("HUB_CONFIG") or "config.yaml")
    try:
        text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {config_path} not found (pass --config PATH)") from exc
    except IsADirectoryError as exc:
        raise ConfigError(
            f"config file {config_path} is a directory (pass --config PATH to a YAML file)"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {config_path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"config file {config_path} cannot be read: {exc.strerror or exc}") from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except _DuplicateKey as exc:
        raise ConfigError(
            f"{config_path} line {exc.line}: {exc.key!r} is given twice in one section "
            f"(the later one would silently replace the first): keep one"
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{config_path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{config_path}: the top level must be a mapping of sections")
    return settings_from_dict(data, env_map)


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, every secret replaced by `***`."""
    raw = settings.model_dump(mode="json", by_alias=True)
    _mask(raw)
    webhook = raw["notify"].get("webhook")
    if webhook is not None:
        # Header values are often credentials (Authorization, API keys): names only.
        webhook["headers"] = {name: "***" for name in webhook["headers"]}
    url = settings.storage.url
    raw["storage"]["url"] = re.sub(r"//([^:/@]+):([^@]+)@", r"//\1:***@", url)
    return raw


def _mask(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {
                "token",
                "password",
                "webhook_secret",
                "secret_key",
                "password_hash",
                "secret",
                "metrics_token",
            }:
                node[key] = "***" if value else None
            else:
                _mask(value)
    elif isinstance(node, list):
        for item in node:
            _mask(item)
