"""The shared codes and texts that tell staff why the core refused an action."""

from __future__ import annotations

from hub import i18n
from hub.errors import ConflictError, HubError, NotFoundError, TransientError, ValidationFailed
from hub.refusals import REFUSALS, refusal_code, refusal_text


def test_every_refusal_reads_in_both_languages() -> None:
    for code in REFUSALS:
        texts = {language: refusal_text(code, language) for language in i18n.SUPPORTED}
        assert all(text and not text.startswith("dash.") for text in texts.values()), code
        assert texts["uk"] != texts["en"], code
    assert refusal_text("no such code", "uk") == refusal_text("failed", "uk")


def test_a_refusal_code_is_the_errors_own_or_failed() -> None:
    assert refusal_code(ValidationFailed("unknown manager", code="no_manager")) == "no_manager"
    assert refusal_code(ValidationFailed("bad")) == "invalid"
    assert refusal_code(ConflictError("L-1 is closed", code="closed")) == "closed"
    assert refusal_code(ConflictError("changed")) == "conflict"
    assert refusal_code(NotFoundError("lead L-9 does not exist")) == "no_lead"
    assert refusal_code(TransientError("server down", 5.0)) == "failed"
    assert refusal_code(HubError("odd", code="not a known code")) == "failed"
