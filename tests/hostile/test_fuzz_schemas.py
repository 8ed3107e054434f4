"""Property-based fuzzing of the form and API input schemas (hypothesis): any JSON object
posted gets a 2xx or a clear 4xx in the error shape, never a 5xx, and a 4xx stores nothing."""

from __future__ import annotations

from typing import Any

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.app import Hub
from tests.hostile.conftest import assert_json_error, stored

# Text including lone surrogates, controls and line separators: json.dumps escapes them.
any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=8,
)
plausible = st.sampled_from(
    [
        "olena@example.com",
        "+380 67 123 45 67",
        "@olena_k",
        "Привіт",
        "",
        " ",
        "$gt",
        "message",
        "service_request",
    ]
)
field_value = plausible | any_text | json_values
FORM_FIELDS = ["name", "email", "phone", "telegram", "subject", "message", "website", "lang", "_token"]
API_FIELDS = [*FORM_FIELDS[:6], "text", "kind", "form", "language", "external_id"]


def objects(fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    known = st.fixed_dictionaries({}, optional={f: field_value for f in fields})
    extra = st.dictionaries(any_text, json_values, max_size=3)
    return st.builds(lambda a, b: {**b, **a}, known, extra)


FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


async def _check(hub: Hub, resp: aiohttp.ClientResponse, before: Any) -> None:
    assert resp.status < 500, f"{resp.status}: {(await resp.text())[:300]}"
    if resp.status >= 400:
        await assert_json_error(resp, resp.status)
        assert await stored(hub) == before
    else:
        assert resp.status in (200, 201, 202)


@FUZZ
@given(body=objects(FORM_FIELDS))
async def test_any_json_object_to_a_form_is_2xx_or_clean_4xx(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, body: dict[str, Any]
) -> None:
    before = await stored(hub)
    resp = await http.post(f"{base_url}/forms/contact", json=body, headers={"Accept": "application/json"})
    await _check(hub, resp, before)


@FUZZ
@given(body=objects(API_FIELDS))
async def test_any_json_object_to_the_leads_api_is_2xx_or_clean_4xx(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str], body: dict[str, Any]
) -> None:
    before = await stored(hub)
    resp = await http.post(f"{base_url}/api/v1/leads", json=body, headers=auth)
    await _check(hub, resp, before)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    action=st.sampled_from(["replies", "notes", "assign", "resolve", "reopen"]),
    body=objects(["text", "author", "manager", "by"]),
)
async def test_any_json_object_to_lead_actions_is_never_5xx(
    hub: Hub,
    http: aiohttp.ClientSession,
    base_url: str,
    auth: dict[str, str],
    action: str,
    body: dict[str, Any],
) -> None:
    page = await hub.store.inbox_list("done", limit=1)
    if not page:
        resp = await http.post(
            f"{base_url}/forms/contact", json={"email": "fuzz@example.com", "message": "fuzz target"}
        )
        assert resp.status == 201
    resp = await http.post(f"{base_url}/api/v1/leads/L-1/{action}", json=body, headers=auth)
    assert resp.status < 500, f"{resp.status}: {(await resp.text())[:300]}"
    if resp.status >= 400:
        await assert_json_error(resp, resp.status)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    params=st.dictionaries(
        st.sampled_from(
            ["status", "kind", "assignee", "team", "channel", "breached", "q", "limit", "cursor"]
        ),
        any_text.filter(lambda s: "\x00" not in s),
        max_size=4,
    )
)
async def test_any_lead_filters_are_never_5xx(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str], params: dict[str, str]
) -> None:
    resp = await http.get(f"{base_url}/api/v1/leads", params=params, headers=auth)
    assert resp.status < 500, f"{params!r}: {resp.status} {(await resp.text())[:300]}"
    if resp.status >= 400:
        await assert_json_error(resp, resp.status)
