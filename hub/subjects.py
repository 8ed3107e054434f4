"""What a subject line is about, without the decoration mail clients and the hub add."""

from __future__ import annotations

import re

LEAD_TOKEN = re.compile(r"\[\s*#?\s*L-?(\d{1,12})\s*\]", re.IGNORECASE)
REPLY_PREFIX = re.compile(
    r"^\s*((re|fw|fwd|aw|wg|sv|vs|ответ|отв|відп|на|пересл)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE
)


def clean_subject(subject: str) -> str:
    """A subject without reply prefixes and lead tokens (for `Re: <subject> [#L-n]`)."""
    subject = LEAD_TOKEN.sub("", subject or "")
    return re.sub(r"\s+", " ", REPLY_PREFIX.sub("", subject)).strip()


def follow_up_subject(subject: str, lead_subject: str) -> str:
    """The subject a follow-up keeps on its own message: empty when it says no more than its
    lead's (`Re: <lead subject> [#L-n]`), since the lead shows that one already."""
    topic = clean_subject(subject)
    if not topic or topic.casefold() == clean_subject(lead_subject).casefold():
        return ""
    return re.sub(r"\s+", " ", subject).strip()[:500]
