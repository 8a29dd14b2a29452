"""The Alerts page and its API (``/alerts``, ``/api/v1/alerts``): what fires now, the rules and
channels (admins edit them), and the history of notifications with their delivery results.

The configuration is written whole (``PUT /api/v1/alerts/config``): the page's script sends back
the redacted JSON it was given, edited; ``"***"`` keeps a stored secret (see
:func:`kilowatch.alerts.config.parse_config`). An ``ETag`` (a hash of the stored configuration)
lets a writer say which version it edited (``If-Match``), so two admins do not overwrite each
other's changes unknowingly. The states and the history are the service's; this module only
reads them.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, tzinfo
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import HTMLResponse, Response

from kilowatch.alerts.channels import Sender
from kilowatch.alerts.config import (
    CHANNEL_KINDS,
    RULE_KINDS,
    SMTP_SECURITY,
    AlertsConfig,
    config_to_json,
    load_config,
    parse_config,
    save_config,
)
from kilowatch.alerts.state import AlertRecord, AlertState, Notification, current, history
from kilowatch.errors import ConfigError, DeliveryError, Problem
from kilowatch.store.audit import audited
from kilowatch.store.protocol import Store
from kilowatch.web import openapi
from kilowatch.web.api import JSONResponse, StrictJSONRoute
from kilowatch.web.deps import Admin, State, Viewer
from kilowatch.web.views import display_name

PAGE_HISTORY = 50
"""History entries the page shows (the API gives up to :data:`MAX_HISTORY`)."""
MAX_HISTORY = 1000
MAX_CHANNEL_NAME = 64
AUDIT_ACTION = "alerts.rules"
TEST_ACTION = "alerts.test"

router = APIRouter()
api = APIRouter(prefix="/api/v1/alerts", route_class=StrictJSONRoute, tags=["alerts"])
pages = APIRouter(include_in_schema=False)


# -- OpenAPI ---------------------------------------------------------------------------------------


def _problem(description: str) -> dict[str, Any]:
    ref = {"$ref": "#/components/schemas/Problem"}
    return {"description": description, "content": {openapi.PROBLEM_MEDIA_TYPE: {"schema": ref}}}


_ETAG_HEADER = {
    "ETag": {"description": "the stored configuration's version", "schema": {"type": "string"}}
}
CONFIG_READ: dict[int | str, dict[str, Any]] = {
    200: {"description": "The configuration, secrets as `***`", "headers": _ETAG_HEADER},
    **openapi.READ,
}
CONFIG_WRITE: dict[int | str, dict[str, Any]] = {
    200: {"description": "The stored configuration, secrets as `***`", "headers": _ETAG_HEADER},
    **openapi.problems(401, 403),
    412: _problem(
        "`If-Match` names another version: someone changed the configuration since you read it "
        "(`precondition-failed`); read it again"
    ),
    422: _problem(
        "The configuration is invalid: not JSON, or a rule or channel with a wrong or missing "
        "key (`invalid-alerts-config`, naming the rule or channel and the key); nothing is stored"
    ),
    **openapi.problems(503),
}
CHANNEL_TEST: dict[int | str, dict[str, Any]] = {
    **openapi.problems(401, 403),
    404: _problem("No channel of that name (`not-found`)"),
    **openapi.problems(422, 503),
}

_TEXT = {"type": ["string", "null"]}
_TEXTS = {"type": "array", "items": {"type": "string"}}
_NUMBER = {"type": ["number", "null"], "minimum": 0}
_SECONDS = {"type": ["integer", "null"], "minimum": 0}
RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An alert rule (docs/alerts.md); the keys that apply depend on `kind`.",
    "required": ["id", "kind"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]{0,63}$"},
        "kind": {"enum": list(RULE_KINDS)},
        "name": _TEXT,
        "enabled": {"type": "boolean"},
        "devices": {**_TEXTS, "description": "glob patterns over device ids; empty: every device"},
        "channel": {**_TEXT, "description": "power_above: the meter channel; null: the total"},
        "threshold_w": {**_NUMBER, "description": "power_above: watts"},
        "budget_wh": {**_NUMBER, "description": "daily_energy_above: Wh per local day"},
        "for_s": {**_SECONDS, "description": "seconds the condition must last"},
        "repeat_s": {**_SECONDS, "description": "notify again while firing; null: never"},
        "notify": {**_TEXTS, "description": "channel names"},
    },
}
CHANNEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A notification channel; the keys that apply depend on `kind`. A secret "
    "(`secret`, `token`, `password`) given as `***` keeps the stored one.",
    "required": ["name", "kind"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]{0,63}$"},
        "kind": {"enum": list(CHANNEL_KINDS)},
        "url": {**_TEXT, "description": "webhook, ntfy: http(s) URL"},
        "secret": {**_TEXT, "description": "webhook: whsec_ + base64 of 24-64 bytes"},
        "token": {**_TEXT, "description": "ntfy: bearer token"},
        "smtp_host": _TEXT,
        "smtp_port": {"type": ["integer", "null"], "minimum": 1, "maximum": 65535},
        "smtp_security": {"enum": [*SMTP_SECURITY, None]},
        "username": _TEXT,
        "password": _TEXT,
        "sender": _TEXT,
        "recipients": _TEXTS,
    },
}
CONFIG_EXAMPLE: dict[str, Any] = {
    "rules": [
        {
            "id": "kettle-power",
            "kind": "power_above",
            "name": "Kettle left on",
            "devices": ["shellyplugsg3-*"],
            "threshold_w": 2000,
            "for_s": 300,
            "notify": ["ops-hook"],
        }
    ],
    "channels": [
        {
            "name": "ops-hook",
            "kind": "webhook",
            "url": "http://127.0.0.1:9/hooks/kilowatch",
            "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        }
    ],
}
CONFIG_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "rules": {"type": "array", "items": RULE_SCHEMA},
                        "channels": {"type": "array", "items": CHANNEL_SCHEMA},
                    },
                },
                "example": CONFIG_EXAMPLE,
            }
        },
    }
}


# -- helpers ---------------------------------------------------------------------------------------


def etag(cfg: AlertsConfig) -> str:
    """The configuration's version: a hash of its stored form (secrets included, so changing
    only a secret is a new version; a truncated SHA-256 tells nothing about them)."""
    stored = orjson.dumps(config_to_json(cfg, secrets=True), option=orjson.OPT_SORT_KEYS)
    return '"' + hashlib.sha256(stored).hexdigest()[:32] + '"'


def _config_response(cfg: AlertsConfig) -> Response:
    return JSONResponse(config_to_json(cfg), headers={"ETag": etag(cfg)})


def changes(before: AlertsConfig, after: AlertsConfig) -> dict[str, dict[str, list[str]]]:
    """Which rules and channels a write adds, removes or changes (ids and names only: the audit
    log never holds a secret)."""

    def diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[str]]:
        return {
            "added": sorted(new.keys() - old.keys()),
            "removed": sorted(old.keys() - new.keys()),
            "changed": sorted(k for k in old.keys() & new.keys() if old[k] != new[k]),
        }

    return {
        "rules": diff({r.id: r for r in before.rules}, {r.id: r for r in after.rules}),
        "channels": diff({c.name: c for c in before.channels}, {c.name: c for c in after.channels}),
    }


def _invalid(err: ConfigError) -> Problem:
    # parse_config's messages start with what is wrong ("rule 'x'", "channel 'y'", "rules[2]"),
    # then the key and why.
    where, sep, reason = str(err).partition(": ")
    return Problem(
        422,
        str(err),
        slug="invalid-alerts-config",
        title="Invalid alerts configuration",
        extra={"invalid-params": [{"name": where if sep else "body", "reason": reason or where}]},
    )


async def _rule_titles(store: Store) -> dict[str, str]:
    try:
        cfg = await load_config(store)
    except ConfigError:
        return {}
    return {r.id: r.title for r in cfg.rules}


def state_json(state: AlertState, titles: dict[str, str]) -> dict[str, Any]:
    return {**state.to_json(), "rule_name": titles.get(state.rule, state.rule)}


def record_json(record: AlertRecord, titles: dict[str, str]) -> dict[str, Any]:
    return {**record.to_json(), "ok": record.ok, "rule_name": titles.get(record.rule, record.rule)}


# -- API -------------------------------------------------------------------------------------------


@api.get(
    "", summary="Alerts now: firing, then pending, then recently resolved", responses=openapi.READ
)
async def list_alerts(state: State, _: Viewer) -> Response:
    titles = await _rule_titles(state.store)
    return JSONResponse({"alerts": [state_json(s, titles) for s in await current(state.store)]})


@api.get(
    "/history",
    summary="Notifications sent, newest first, with their delivery results",
    responses=openapi.FILTERED_READ,
)
async def alert_history(
    state: State, _: Viewer, limit: Annotated[int, Query(ge=1, le=MAX_HISTORY)] = 100
) -> Response:
    titles = await _rule_titles(state.store)
    records = await history(state.store, limit=limit)
    return JSONResponse({"history": [record_json(r, titles) for r in records]})


@api.get("/config", summary="Alert rules and channels (secrets as ***)", responses=CONFIG_READ)
async def get_config(state: State, _: Viewer) -> Response:
    return _config_response(await load_config(state.store))


@api.put(
    "/config",
    summary="Replace the alert rules and channels (admin); *** keeps a stored secret",
    responses=CONFIG_WRITE,
    openapi_extra=CONFIG_BODY,
)
async def put_config(
    request: Request,
    state: State,
    principal: Admin,
    if_match: Annotated[
        str | None,
        Header(description="the ETag of the configuration you edited (optional)", max_length=200),
    ] = None,
) -> Response:
    try:
        data = await request.json()
    except orjson.JSONDecodeError as err:
        raise Problem(
            422,
            f"body: not JSON (RFC 8259): {err}",
            slug="invalid-alerts-config",
            extra={"invalid-params": [{"name": "body", "reason": "not JSON"}]},
        ) from None
    try:
        before = await load_config(state.store)
    except ConfigError:
        before = AlertsConfig()  # what is stored no longer reads: a whole new one may replace it
    try:
        after = parse_config(data, previous=before)
    except ConfigError as err:
        raise _invalid(err) from None
    if after == before:
        # A repeated write (e.g. a retry after a lost answer, with the If-Match of before it):
        # what was asked for holds already; nothing to store or audit.
        return _config_response(after)
    if if_match is not None and if_match.strip() not in ("*", etag(before)):
        raise Problem(
            412,
            "the alerts configuration changed since you read it; reload it and make your change "
            "again",
            slug="precondition-failed",
            title="Precondition failed",
        )
    who = principal.actor
    detail = changes(before, after)
    async with audited(state.store, who, AUDIT_ACTION, detail=detail) as act:
        act.detail.update(detail)  # the outcome's entry says what changed too
        await save_config(state.store, after)
    return _config_response(after)


ChannelName = Annotated[str, Path(min_length=1, max_length=MAX_CHANNEL_NAME, examples=["ops-hook"])]


def test_notification(channel: str, who: str, now: float) -> Notification:
    """The notification a test sends: transition ``test`` (a webhook's ``alert.test``)."""
    return Notification(
        id=uuid.uuid4().hex,
        ts=now,
        rule="test",
        device="",
        transition="test",
        message=f"Test notification from kilowatch to channel {channel!r} (sent by {who})",
        rule_name="Test",
        channels=(channel,),
    )


@api.post(
    "/channels/{name}/test",
    summary="Send a test notification through a channel (admin); one attempt, its outcome",
    responses=CHANNEL_TEST,
)
async def test_channel(
    request: Request, name: ChannelName, state: State, principal: Admin
) -> Response:
    cfg = await load_config(state.store)
    channel = cfg.channel(name)
    if channel is None:
        known = ", ".join(c.name for c in cfg.channels) or "none configured"
        raise Problem(404, f"no alert channel {name!r} ({known})")
    who = principal.actor
    note = test_notification(name, who, state.clock())
    error: str | None = None
    detail = {"channel": name, "notification": note.id}
    # One attempt, no retries: the person who asked waits for the answer (bounded by the
    # sender's timeouts).
    async with audited(state.store, who, TEST_ACTION, detail=detail) as act, Sender() as sender:
        act.detail.update(detail)
        try:
            await sender.send_once(channel, note)
        except DeliveryError as err:
            error = str(err)
            act.result = "failed"
            act.detail["error"] = error
    return JSONResponse({"channel": name, "ok": error is None, "error": error, "id": note.id})


# -- the page --------------------------------------------------------------------------------------


def _describe(rule: dict[str, Any]) -> str:
    """What a rule watches, in words (the rules table)."""
    for_s = rule.get("for_s") or 0
    lasting = f" for {_duration(for_s)}" if for_s else ""
    kind = rule["kind"]
    if kind == "offline":
        return f"offline{lasting or ' at once'}"
    if kind == "power_above":
        channel = f" on {rule['channel']}" if rule.get("channel") else ""
        return f"power above {_watts(rule['threshold_w'])}{channel}{lasting}"
    if kind == "daily_energy_above":
        return f"energy today above {_watt_hours(rule['budget_wh'])}"
    return "firmware update failed"


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def _watts(w: float) -> str:
    return f"{w / 1000:g} kW" if w >= 10_000 else f"{w:g} W"


def _watt_hours(wh: float) -> str:
    return f"{wh / 1000:g} kWh" if wh >= 1000 else f"{wh:g} Wh"


def local_time(ts: float | None, zone: tzinfo) -> str:
    """``ts`` as the site's local time (the footer names the zone); ``–`` for what no datetime
    holds."""
    if ts is None:
        return "–"
    try:
        return datetime.fromtimestamp(ts, zone).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return "–"


def _target(channel: dict[str, Any]) -> str:
    """Where a channel delivers (never a secret)."""
    if channel["kind"] == "email":
        port = f":{channel['smtp_port']}" if channel.get("smtp_port") else ""
        return f"{', '.join(channel.get('recipients') or [])} via {channel['smtp_host']}{port}"
    return str(channel.get("url") or "")


@pages.get("/alerts")
async def alerts_page(request: Request, state: State, principal: Viewer) -> Response:
    error = None
    try:
        cfg = await load_config(state.store)
    except ConfigError as err:
        cfg, error = AlertsConfig(), str(err)
    data = config_to_json(cfg)
    titles = {r.id: r.title for r in cfg.rules}
    records = await state.store.devices()
    templates = request.app.state.templates
    page: HTMLResponse = templates.TemplateResponse(
        request,
        "alerts.html",
        {
            "principal": principal,
            "site": state.site,
            "nav": "alerts",
            "alerts": [state_json(s, titles) for s in await current(state.store)],
            "history": [record_json(r, titles) for r in await history(state.store, PAGE_HISTORY)],
            "config": data,
            "etag": etag(cfg),
            "rules": [{**r, "what": _describe(r)} for r in data["rules"]],
            "channels": [{**c, "target": _target(c)} for c in data["channels"]],
            "devices": [{"id": d.device, "name": display_name(d)} for d in records],
            "names": {d.device: display_name(d) for d in records},
            "rule_kinds": RULE_KINDS,
            "channel_kinds": CHANNEL_KINDS,
            "smtp_security": SMTP_SECURITY,
            "error": error,
            "local": lambda ts: local_time(ts, state.site.zone),
        },
    )
    return page


router.include_router(api)
router.include_router(pages)

__all__ = ["changes", "etag", "router"]
