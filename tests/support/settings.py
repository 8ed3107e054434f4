"""Test settings: the real config schema with a throwaway SQLite file and a free port."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hub.config import Settings, settings_from_dict

API_TOKEN = "test-api-token-5f2c"


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` laid over `base`, recursively for nested mappings."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def base_config(tmp_path: Path) -> dict[str, Any]:
    """A small but complete config: two teams, four managers, fast test-friendly timings."""
    return {
        "storage": {"url": f"sqlite:///{tmp_path / 'hub.db'}"},
        # Each test's own files: the default (data/attachments) is shared by every run in the cwd.
        "email": {"attachments_dir": str(tmp_path / "attachments")},
        "web": {"host": "127.0.0.1", "port": 0, "form_rate_limit": "0"},
        "api": {"token": API_TOKEN},
        "forms": {"contact": {"kind": "message"}, "service": {"kind": "service_request"}},
        "managers": [
            {
                "id": "olena",
                "name": "Олена Коваль",
                "role": "lead",
                "teams": ["support"],
                "telegram_id": 111,
            },
            {
                "id": "taras",
                "name": "Тарас Бондар",
                "role": "agent",
                "teams": ["support"],
                "telegram_id": 222,
            },
            {
                "id": "iryna",
                "name": "Ірина Мельник",
                "role": "agent",
                "teams": ["service"],
                "telegram_id": 333,
            },
            {
                "id": "andrii",
                "name": "Андрій Шевчук",
                "role": "lead",
                "teams": ["service"],
                "telegram_id": 444,
            },
        ],
        "teams": {"support": {"strategy": "least_loaded"}, "service": {"strategy": "least_loaded"}},
        "routing": {
            "default_team": "support",
            "rules": [{"name": "service", "match": {"kind": "service_request"}, "team": "service"}],
        },
        "sla": {"check_every": "30s"},
        "outbox": {"poll_every": "1s", "backoff_base": "1s", "backoff_max": "5s"},
    }


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Validated test settings; keyword arguments override top-level sections (merged)."""
    return settings_from_dict(deep_merge(base_config(tmp_path), overrides), env={})
