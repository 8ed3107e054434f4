"""The hub's one aiohttp application: forms, API, health, and whatever channels add."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web
from multidict import CIMultiDict

from hub.errors import ConflictError, ContactErased, IdempotencyKeyReused, NotFoundError, ValidationFailed
from hub.web.api import require_token, setup_api
from hub.web.dashboard import setup_dashboard
from hub.web.keys import HUB_KEY
from hub.web.metrics import setup_metrics
from hub.web.openapi import setup_openapi
from storage.base import StoreError

if TYPE_CHECKING:
    from hub.app import Hub

log = logging.getLogger(__name__)


def _json_error(status: int, code: str, detail: str, **extra: Any) -> web.Response:
    return web.json_response({"error": code, "detail": detail, **extra}, status=status)


@web.middleware
async def translate_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Hub errors become JSON errors with the right status; nothing leaks a traceback."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except IdempotencyKeyReused as exc:
        return _json_error(422, "idempotency_key_reused", str(exc), fields=exc.fields)
    except ValidationFailed as exc:
        return _json_error(422, "validation_failed", str(exc), fields=exc.fields)
    except NotFoundError as exc:
        return _json_error(404, "not_found", str(exc))
    except ContactErased as exc:
        return _json_error(409, "contact_erased", str(exc))
    except ConflictError as exc:
        return _json_error(409, "conflict", str(exc))
    except StoreError as exc:
        log.warning("%s %s: store unavailable: %s", request.method, request.path, exc)
        return _json_error(503, "unavailable", "the database is unavailable; try again shortly")
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[HUB_KEY].settings.web.max_body_bytes
        return _json_error(413, "too_large", f"the body is larger than the limit of {limit} bytes")
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            code = exc.reason.lower().replace(" ", "_")
            response = _json_error(exc.status, code, exc.text or exc.reason)
            # Headers such as Allow (a 405 must name the methods, RFC 9110) describe the status,
            # not the text body replaced here, so they carry over; the body's own ones do not.
            headers = CIMultiDict(exc.headers)
            for name in (hdrs.CONTENT_TYPE, hdrs.CONTENT_LENGTH, hdrs.CONTENT_ENCODING):
                headers.popall(name, None)
            response.headers.extend(headers)
            return response
        raise
    except Exception:
        # A bug, not the client's fault: the traceback goes to the log (secrets redacted there),
        # the client gets the API's error shape and nothing about the internals.
        log.exception("%s %s: unhandled error", request.method, request.path)
        return _json_error(500, "internal", "an internal error occurred; it has been logged")


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz (no auth): ok when the store answers, degraded (503) when it does not."""
    hub: Hub = request.app[HUB_KEY]
    ok = await hub.store.ping()
    body = {"status": "ok" if ok else "degraded", "storage": hub.store.backend}
    return web.Response(text=json.dumps(body), status=200 if ok else 503, content_type="application/json")


def create_web_app(hub: Hub) -> web.Application:
    """The application with every route the enabled parts provide."""
    app = web.Application(
        client_max_size=hub.settings.web.max_body_bytes,
        middlewares=[translate_errors, require_token],
    )
    app[HUB_KEY] = hub
    app.router.add_get("/healthz", healthz)
    setup_api(app)
    setup_openapi(app)
    setup_metrics(app)
    setup_dashboard(app)
    for setup in hub.web_setups:
        setup(app)
    return app
