"""Customer- and staff-facing texts in Ukrainian and English, kept in `hub/locales/*.yaml`."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

LOCALES_DIR = Path(__file__).with_name("locales")
SUPPORTED = ("uk", "en")
DEFAULT = "uk"


@cache
def _catalog(language: str) -> dict[str, str]:
    data: Any = yaml.safe_load((LOCALES_DIR / f"{language}.yaml").read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"locale file {language}.yaml must be a mapping of key: text")
    return {str(k): str(v) for k, v in data.items()}


def pick_language(code: str | None, russian_fallback: str = DEFAULT) -> str:
    """Ukrainian for `uk`, the configured fallback for `ru`, English for anything else."""
    code = (code or "").strip().lower().replace("_", "-")
    primary = code.split("-", 1)[0]
    if primary == "uk":
        return "uk"
    if primary == "ru":
        return russian_fallback if russian_fallback in SUPPORTED else DEFAULT
    return "en" if primary else DEFAULT


def from_accept_language(header: str | None) -> str:
    """The best supported language from an HTTP Accept-Language header."""
    best: tuple[float, str] | None = None
    for part in (header or "").split(","):
        tag, _, params = part.strip().partition(";")
        if not tag:
            continue
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        language = pick_language(tag)
        if best is None or quality > best[0]:
            best = (quality, language)
    return best[1] if best else DEFAULT


def text(key: str, language: str, **values: Any) -> str:
    """The text for `key` in `language` (English, then the key itself, when missing)."""
    template = (
        _catalog(language if language in SUPPORTED else DEFAULT).get(key) or _catalog("en").get(key) or key
    )
    return template.format(**values) if values else template
