"""Benchmark: a burst of customer messages relayed into two teams' staff groups.

    python -m bench.telegram_relay [--messages 2000] [--leads 300] [--scale 60]

The Bot API emulator enforces Telegram's limits (1 msg/s per chat, 20/min per group,
30/s overall), all multiplied by --scale so the run stays short; the hub paces itself to
the same scaled limits. Prints the time until every message is visible in its lead's topic,
the API calls, the 429s, the coalescing ratio, and the lower bound the limits allow
(each lead needs at least a createForumTopic and a card post in its team's group).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import tempfile
import time
from pathlib import Path

from hub.app import Hub
from tests.support.settings import make_settings
from tests.support.telegram_emulator import TelegramEmulator

GROUPS = {"support": -100501, "service": -100502}


async def run(messages: int, leads: int, scale: float, seed: int) -> None:
    rng = random.Random(seed)
    emu = TelegramEmulator()
    await emu.start()
    for chat in GROUPS.values():
        emu.add_group(chat, forum=True)
    limits = {
        "chat_per_second": 1.0 * scale,
        "group_per_minute": 20.0 * scale,
        "global_per_second": 30.0 * scale,
    }
    emu.enforce_limits(limits["chat_per_second"], limits["group_per_minute"], limits["global_per_second"])
    with tempfile.TemporaryDirectory() as tmp:
        settings = make_settings(
            Path(tmp),
            telegram={
                "enabled": True,
                "token": emu.token,
                "api_base": emu.base_url,
                "poll_timeout": "1s",
                "poller_lease": "30s",
                "limits": limits,
            },
            teams={
                "support": {"strategy": "least_loaded", "staff_group_id": GROUPS["support"]},
                "service": {"strategy": "least_loaded", "staff_group_id": GROUPS["service"]},
            },
            routing={
                "default_team": "support",
                "rules": [{"name": "repairs", "match": {"keywords": ["repair"]}, "team": "service"}],
            },
            managers=[
                {"id": "olena", "name": "Olena", "teams": ["support"], "telegram_id": 111, "capacity": 1000},
                {"id": "iryna", "name": "Iryna", "teams": ["service"], "telegram_id": 333, "capacity": 1000},
            ],
            log_level="WARNING",
        )
        hub = Hub(settings)
        await hub.start()
        try:
            # Every lead writes at least once; the rest of the burst lands on random leads.
            owners = list(range(leads)) + [rng.randrange(leads) for _ in range(messages - leads)]
            team_of = {lead: ("service" if lead % 2 else "support") for lead in range(leads)}
            expected: dict[str, int] = {}
            started = time.monotonic()
            for index, lead in enumerate(owners):
                user_id = 10_000 + lead
                user = emu.user(user_id, f"Customer{lead}", "uk")
                topic_word = "repair" if team_of[lead] == "service" else "question"
                marker = f"m{index:05d}x"
                text = f"{marker} {topic_word} " + " ".join(
                    rng.choice(WORDS) for _ in range(rng.randint(5, 25))
                )
                emu.send_text(user_id, user, text)
                expected[marker] = GROUPS[team_of[lead]]
            last_update = emu.next_update_id - 1
            ingested_at: float | None = None
            seen: set[str] = set()
            scanned = 0
            deadline = started + 900
            while len(seen) < len(expected) and time.monotonic() < deadline:
                for sent in emu.sent[scanned:]:
                    if sent.chat_id < 0:
                        for word in sent.text.split():
                            if word in expected and expected[word] == sent.chat_id:
                                seen.add(word)
                scanned = len(emu.sent)
                if ingested_at is None and emu.confirmed_offset > last_update:
                    ingested_at = time.monotonic() - started
                await asyncio.sleep(0.05)
            elapsed = time.monotonic() - started
        finally:
            await hub.stop()
            await emu.stop()
    calls = [c for c in emu.calls if c.method not in ("getUpdates", "getMe", "deleteWebhook")]
    group_posts = [
        c
        for c in calls
        if c.method in ("sendMessage", "copyMessage") and int(c.params["chat_id"]) < 0 and c.status == 200
    ]
    topics = [c for c in calls if c.method == "createForumTopic" and c.status == 200]
    per_group = {
        chat: sum(1 for lead in range(leads) if GROUPS[team_of[lead]] == chat) for chat in GROUPS.values()
    }
    bound = max(
        lower_bound(2 * n, int(limits["group_per_minute"]), 60.0, 1.0 / limits["chat_per_second"])
        for n in per_group.values()
    )
    print(f"messages: {len(expected)}  leads: {leads}  groups: {len(GROUPS)}  time scale: x{scale:g}")
    print(f"visible in topics: {len(seen)}/{len(expected)}")
    if ingested_at is not None:
        print(f"stored and accepted by the hub (getUpdates confirmed): {ingested_at:.1f} s")
    print(
        f"time until all visible: {elapsed:.1f} s (lower bound from the limits, 2 calls per lead: {bound:.1f} s, ratio {elapsed / bound:.2f})"
    )
    print(
        f"API calls (excluding getUpdates): {len(calls)}  topics: {len(topics)}  group posts: {len(group_posts)}"
    )
    print(f"429 answers: {emu.too_many}")
    print(
        f"coalescing ratio: {len(expected) / max(1, len(group_posts)):.2f} customer messages per group post"
    )


def lower_bound(calls: int, per_window: int, window: float, spacing: float) -> float:
    """The earliest time `calls` sends to one group can finish: at most `per_window` in any
    `window` seconds and `spacing` apart (the greedy schedule is optimal for these limits)."""
    times: list[float] = []
    for k in range(calls):
        t = times[-1] + spacing if times else 0.0
        if k >= per_window:
            t = max(t, times[k - per_window] + window)
        times.append(t)
    return times[-1] if times else 0.0


WORDS = [
    "котел",
    "не",
    "працює",
    "гаряча",
    "вода",
    "тиск",
    "адреса",
    "модель",
    "фото",
    "будь",
    "ласка",
    "завтра",
    "вранці",
    "дякую",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--leads", type=int, default=300)
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(run(args.messages, args.leads, args.scale, args.seed))


if __name__ == "__main__":
    main()
