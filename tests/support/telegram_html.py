"""A strict check of Bot API HTML, after tdlib's parser: what Telegram would answer 400 to."""

from __future__ import annotations

import re

ALLOWED = frozenset(
    {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a"}
    | {"tg-emoji", "code", "pre", "blockquote"}
)
_ENTITY = re.compile(r"&(lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);")
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}


def html_problems(text: str, limit: int = 4096) -> list[str]:
    """What Telegram's HTML parse mode would reject in `text` (an empty list: it parses)."""
    problems: list[str] = []
    stack: list[str] = []
    visible: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "<":
            end = text.find(">", i)
            if end < 0:
                problems.append(f"unclosed '<' at {i}: {text[i : i + 20]!r}")
                break
            tag = text[i + 1 : end]
            if tag.startswith("/"):
                name = tag[1:].strip().lower()
                if not stack or stack[-1] != name:
                    problems.append(f"end tag </{name}> does not match {stack[-1:]}")
                if stack:
                    stack.pop()
            else:
                name = tag.split()[0].lower() if tag.split() else ""
                if name not in ALLOWED:
                    problems.append(f"unsupported start tag <{tag[:30]}>")
                else:
                    stack.append(name)
            i = end + 1
            continue
        if char == "&":
            match = _ENTITY.match(text, i)
            if match is None:
                problems.append(f"broken entity at {i}: {text[i : i + 8]!r}")
                visible.append(char)
                i += 1
                continue
            visible.append(_NAMED.get(match.group(1), "?"))
            i = match.end()
            continue
        visible.append(char)
        i += 1
    if stack:
        problems.append(f"unclosed tags {stack}")
    units = len("".join(visible).encode("utf-16-le")) // 2
    if units > limit:
        problems.append(f"too long after parsing: {units} UTF-16 units")
    return problems
