"""Ordered routing rules: the first rule whose every condition matches picks the team."""

from __future__ import annotations

from dataclasses import dataclass

from hub.config import RoutingRule
from hub.ports import RoutingRequest


def _one_of(expected: str | list[str] | None, actual: str) -> bool:
    if expected is None:
        return True
    options = [expected] if isinstance(expected, str) else expected
    return actual.casefold() in {o.casefold() for o in options}


def _same_language(expected: str | list[str], actual: str) -> bool:
    """`uk` matches `uk`, `uk-UA` and `uk_UA`: only the primary language subtag counts."""
    primary = actual.replace("_", "-").split("-")[0].casefold()
    options = [expected] if isinstance(expected, str) else expected
    return bool(primary) and primary in {o.replace("_", "-").split("-")[0].casefold() for o in options}


@dataclass(frozen=True, slots=True)
class RuleMatch:
    index: int
    rule: RoutingRule

    @property
    def label(self) -> str:
        return self.rule.name or f"rules[{self.index}]"


def rule_matches(rule: RoutingRule, request: RoutingRequest) -> bool:
    """True when every condition the rule states holds for the request."""
    cond = rule.match
    if not _one_of(cond.channel, request.channel):
        return False
    if cond.kind is not None and cond.kind != request.kind:
        return False
    if not _one_of(cond.form, request.form_id):
        return False
    if not _one_of(cond.recipient, request.recipient):
        return False
    if cond.language is not None and not _same_language(cond.language, request.language):
        return False
    if cond.contact_tags:
        tags = {t.casefold() for t in request.contact_tags}
        if not any(t.casefold() in tags for t in cond.contact_tags):
            return False
    if cond.keywords:
        # casefold handles Cyrillic as well as Latin (e.g. "ремонт" matches "РЕМОНТ").
        haystack = f"{request.subject}\n{request.text}".casefold()
        if not any(word.casefold() in haystack for word in cond.keywords):
            return False
    return True


def first_match(rules: list[RoutingRule], request: RoutingRequest) -> RuleMatch | None:
    """The first matching rule, in config order."""
    for index, rule in enumerate(rules):
        if rule_matches(rule, request):
            return RuleMatch(index, rule)
    return None
