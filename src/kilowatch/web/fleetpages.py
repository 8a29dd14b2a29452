"""The Fleet page, the Audit page and their API (``/fleet``, ``/fleet/audit``, ``/api/v1/fleet``,
``/api/v1/audit``).

The Fleet page lists the registered devices (the fleet registry joined with what the intake
knows of each: model, firmware, update offered, last seen, online) and each one's profile
compliance. Admins plan and apply a profile from ``<data_dir>/profiles/*.toml`` and run firmware
rollouts from it. Those run as background *jobs* of the web process (one at a time per kind,
owned by this router's lifespan), which the page polls every second
(``GET /api/v1/fleet/jobs/{id}``) for progress and, at the end, the report. Actions need the
service (``WebState.running``: its data dir, secrets file and broker); without it they answer
503. Every action that changes devices is audited (``web:<user>`` from a session,
``api:<token name>`` from an API token); plans and dry runs are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, TypeGuard

from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from kilowatch.accounts.users import Principal
from kilowatch.errors import KilowatchError, Problem
from kilowatch.fleet.apply import CONCURRENCY, ApplyOptions, Status
from kilowatch.fleet.compliance import compliance
from kilowatch.fleet.firmware import STAGES, RolloutOptions, RolloutProgress, rollout
from kilowatch.fleet.profile import Profile, load_profile
from kilowatch.fleet.registry import parse_selection, select
from kilowatch.service import fleetctx
from kilowatch.service.server import Running
from kilowatch.store.audit import devices_text, entry_json
from kilowatch.store.protocol import DeviceRecord, Registration, Store
from kilowatch.web import openapi
from kilowatch.web.api import JSONResponse, StrictJSONRoute
from kilowatch.web.deps import Admin, State, Viewer, WebState
from kilowatch.web.views import display_name, instant, is_online

log = logging.getLogger(__name__)

KINDS = ("plan", "apply", "firmware")
KEEP_JOBS = 20
"""Finished jobs kept for ``GET /api/v1/fleet/jobs/{id}`` (the newest; a restart forgets all)."""
MAX_AUDIT_LIMIT = 1000
MAX_SELECT = 20
MAX_DEVICES = 5000
AUDIT_PAGE = 100


# --- jobs -----------------------------------------------------------------------------------


@dataclass(slots=True)
class FleetJob:
    """A fleet action running in the web process: what it is, who started it, how far it is
    (``done`` of ``total`` devices, each device's last step), and its report once ``done``."""

    id: str
    kind: str
    actor: str
    devices: tuple[str, ...]
    options: dict[str, Any]
    started: float
    state: str = "running"
    """``running``, ``done`` (the report is there) or ``failed`` (``error`` says why)."""
    finished: float | None = None
    done: int = 0
    steps: dict[str, str] = field(default_factory=dict)
    wave: str | None = None
    report: dict[str, Any] | None = None
    rows: list[dict[str, str]] = field(default_factory=list)
    """The report as the page shows it: ``device``, ``status``, ``detail``."""
    result: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "actor": self.actor,
            "state": self.state,
            "options": self.options,
            "started": self.started,
            "finished": self.finished,
            "total": len(self.devices),
            "done": self.done,
            "steps": dict(self.steps),
            "wave": self.wave,
            "result": self.result,
            "rows": self.rows,
            "report": self.report,
            "error": self.error,
        }

    # -- progress, as fleet.apply and fleet.firmware tell it --

    def started_device(self, device: str) -> None:
        self.steps[device] = "started"

    def step(self, device: str, step: str) -> None:
        self.steps[device] = step

    def finished_device(self, device: str, status: Status) -> None:
        self.steps[device] = status.value
        self.done += 1

    def rollout_progress(self, p: RolloutProgress) -> None:
        if p.device is not None:
            self.steps[p.device] = p.state if p.detail is None else f"{p.state} {p.detail}"
        self.done = sum(n for k, n in p.counts.items() if k != "pending")
        self.wave = f"{p.wave}/{p.waves}" + (" halted" if p.halted else "")


class _ApplyProgress:
    """:class:`kilowatch.fleet.apply.Progress` onto a job."""

    def __init__(self, job: FleetJob) -> None:
        self.job = job

    def started(self, device: str) -> None:
        self.job.started_device(device)

    def step(self, device: str, step: str) -> None:
        self.job.step(device, step)

    def finished(self, device: str, status: Status) -> None:
        self.job.finished_device(device, status)


Work = Callable[[FleetJob], Awaitable[None]]


class FleetJobs:
    """The jobs of this web process; their tasks run in the task group of the router's
    lifespan, which cancels them when the app stops."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.jobs: dict[str, FleetJob] = {}
        self.group: asyncio.TaskGroup | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def running(self, kind: str) -> FleetJob | None:
        return next(
            (j for j in self.jobs.values() if j.kind == kind and j.state == "running"), None
        )

    def latest(self) -> FleetJob | None:
        return max(self.jobs.values(), key=lambda j: j.started, default=None)

    def start(self, job: FleetJob, work: Work) -> None:
        """Run ``work`` for ``job`` in the background; 409 while a job of its kind runs."""
        if self.group is None:
            raise _no_service("the web app is not running its lifespan")
        busy = self.running(job.kind)
        if busy is not None:
            raise Problem(
                409,
                f"a {job.kind} job runs already ({busy.id}, started by {busy.actor}); wait for "
                f"it to end: GET /api/v1/fleet/jobs/{busy.id}",
                slug="job-running",
            )
        self.jobs[job.id] = job
        for old in sorted(self.jobs.values(), key=lambda j: j.started)[:-KEEP_JOBS]:
            if old.state != "running":
                del self.jobs[old.id]
        task = self.group.create_task(self._run(job, work), name=f"fleet-{job.kind}-{job.id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, job: FleetJob, work: Work) -> None:
        try:
            await work(job)
            job.state = "done"
        except KilowatchError as err:
            job.state, job.error = "failed", str(err)
            log.warning("fleet %s job %s failed: %s", job.kind, job.id, err)
        except Exception as err:  # the task group must not fall over: the job says it failed
            job.state, job.error = "failed", f"{type(err).__name__}: {err}"
            log.exception("fleet %s job %s failed", job.kind, job.id)
        finally:
            job.finished = self.clock()


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The jobs' owner: a task holding their task group, from startup to shutdown (which
    cancels the jobs still running). The group is not held around the ``yield``, so an error
    raised in the app's block comes out as itself, not wrapped in an exception group."""
    state: WebState = app.state.web
    jobs = FleetJobs(state.clock)
    app.state.fleet_jobs = jobs
    stop = asyncio.Event()
    ready = asyncio.Event()

    async def own() -> None:
        async with asyncio.TaskGroup() as group:
            jobs.group = group
            ready.set()
            try:
                await stop.wait()
            finally:
                jobs.group = None
                for task in list(jobs.tasks):
                    task.cancel()

    owner = asyncio.ensure_future(own())
    await ready.wait()
    try:
        yield
    finally:
        stop.set()
        await owner


router = APIRouter(route_class=StrictJSONRoute, lifespan=_lifespan)


def _jobs(request: Request) -> FleetJobs:
    jobs: FleetJobs | None = getattr(request.app.state, "fleet_jobs", None)
    if jobs is None:
        raise _no_service("the web app is not running its lifespan")
    return jobs


def _no_service(why: str) -> Problem:
    return Problem(
        503,
        f"fleet actions need the running service ({why}): start the dashboard with kilowatch "
        "serve, which holds the data dir, the secrets file and the broker the devices use",
        slug="service-unavailable",
        title="Service unavailable",
    )


def _running(state: WebState) -> Running:
    if state.running is None:
        raise _no_service("this web app runs without it")
    return state.running


# --- who, and which devices -----------------------------------------------------------------


async def _targets(
    store: Store, expressions: Sequence[str], devices: Sequence[str] | None
) -> list[Registration]:
    registry = await store.registry()
    try:
        parse_selection(expressions)
        picked = select(registry, expressions)
    except KilowatchError as err:  # ConfigError, FleetError: a bad KEY=GLOB
        raise Problem(400, str(err), slug="invalid-parameter") from None
    if devices:
        known = {r.device for r in registry}
        unknown = [d for d in devices if d not in known]
        if unknown:
            raise Problem(
                400,
                f"not in the fleet registry: {', '.join(unknown[:10])}; GET /api/v1/fleet/devices "
                "lists it",
                slug="invalid-parameter",
            )
        wanted = set(devices)
        picked = [r for r in picked if r.device in wanted]
    if not picked:
        shown = " ".join(expressions) or "(everything)"
        raise Problem(
            400,
            f"no registered device matches {shown}"
            + (" among the devices named" if devices else "")
            + "; kilowatch fleet discover fills the registry",
            slug="invalid-parameter",
        )
    return picked


def _profile(running: Running, name: str) -> Profile:
    try:
        return load_profile(fleetctx.profile_path(running.settings.data_dir, name))
    except KilowatchError as err:  # ConfigError (no such profile), FleetError (invalid)
        raise Problem(400, str(err), slug="invalid-parameter") from None


def _broker(running: Running) -> str | None:
    """The service's own user on its managed mosquitto (it may publish devices' RPC topics):
    the way to devices registered with transport ``mqtt``."""
    return running.mosquitto.url if running.mosquitto is not None else None


def _new_job(
    kind: str, actor: str, targets: Sequence[Registration], options: dict[str, Any], now: float
) -> FleetJob:
    return FleetJob(
        id=uuid.uuid4().hex[:12],
        kind=kind,
        actor=actor,
        devices=tuple(t.device for t in targets),
        options=options,
        started=now,
    )


# --- the report as rows ---------------------------------------------------------------------


def _plan_rows(plans: Sequence[Any]) -> list[dict[str, str]]:
    rows = []
    for p in plans:
        if p.error is not None:
            rows.append({"device": p.device, "status": "unreadable", "detail": p.error.message})
        elif p.pending:
            detail = "; ".join(str(c) for c in p.pending)
            rows.append({"device": p.device, "status": "drifted", "detail": detail})
        else:
            rows.append({"device": p.device, "status": "in sync", "detail": ""})
    return rows


def _apply_rows(devices: Sequence[Any]) -> list[dict[str, str]]:
    rows = []
    for d in devices:
        detail = d.error.message if d.error is not None else ", ".join(d.steps)
        rows.append({"device": d.device, "status": d.status.value, "detail": detail})
    return rows


def _firmware_rows(devices: Sequence[Any]) -> list[dict[str, str]]:
    rows = []
    for d in devices:
        versions = f"{d.before or '?'} → {d.after or d.target or '?'}"
        detail = versions + (f": {d.reason}" if d.reason else "")
        rows.append({"device": d.device, "status": d.outcome.value, "detail": detail})
    return rows


# --- the API --------------------------------------------------------------------------------


def _problem(description: str) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/Problem"}
    return {"description": description, "content": {openapi.PROBLEM_MEDIA_TYPE: {"schema": schema}}}


_JSON: dict[str, Any] = {"content": {"application/json": {}}}
_NO_SERVICE = _problem(
    "The web app runs without the service (`service-unavailable`), or the store cannot be "
    "reached (`store-unavailable`)."
)
ACTION: dict[int | str, dict[str, Any]] = {
    202: {"description": "The job started: its id, `GET /api/v1/fleet/jobs/{id}`", **_JSON},
    **openapi.problems(401, 403, 422),
    400: _problem(
        "No such profile, an invalid profile, a bad selection, no device selected "
        "(`invalid-parameter`)."
    ),
    409: _problem("A job of the same kind runs already (`job-running`)."),
    503: _NO_SERVICE,
}
JOB_READ: dict[int | str, dict[str, Any]] = {
    **openapi.problems(401, 422),
    404: _problem("No such job: unknown, or forgotten (`not-found`)."),
    503: _NO_SERVICE,
}

_BODY = ConfigDict(extra="forbid", allow_inf_nan=False)
Expressions = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=200)]],
    Field(max_length=MAX_SELECT, examples=[["room=kitchen", "model=S3PM*"]]),
]
DeviceIds = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=MAX_DEVICES)
]


class ProfileAction(BaseModel):
    """A profile from ``<data_dir>/profiles`` (its file name), over the registered devices chosen
    by ``select`` (``KEY=GLOB``; default: the profile's ``[select]``), narrowed to ``devices``
    when given."""

    model_config = _BODY
    profile: Annotated[str, Field(min_length=1, max_length=200, examples=["home.toml"])]
    select: Expressions | None = None
    devices: DeviceIds | None = None


class ApplyAction(ProfileAction):
    dry_run: bool = False


class FirmwareAction(BaseModel):
    """A staged rollout (docs/fleet.md, "Firmware") over the registered devices chosen by
    ``select`` (default: all), narrowed to ``devices`` when given."""

    model_config = _BODY
    stage: Annotated[str, Field(json_schema_extra={"enum": list(STAGES)})] = "stable"
    canary: Annotated[int, Field(strict=True, ge=1, le=MAX_DEVICES)] = 1
    wave_size: Annotated[int, Field(strict=True, ge=1, le=MAX_DEVICES)] | None = None
    max_failures: Annotated[int, Field(strict=True, ge=0, le=MAX_DEVICES)] = 0
    select: Expressions | None = None
    devices: DeviceIds | None = None
    dry_run: bool = False


async def fleet_rows(store: Store, now: float) -> list[dict[str, Any]]:
    """The registered devices as the Fleet page and ``GET /api/v1/fleet/devices`` show them."""
    records = {r.device: r for r in await store.devices()}
    checks = await compliance(store)
    rows = []
    for reg in await store.registry():
        rec = records.get(reg.device)
        check = checks.get(reg.device)
        last_seen = instant(rec.last_seen) if rec is not None else None
        rows.append(
            {
                "device": reg.device,
                "name": display_name(rec) if rec is not None else (reg.name or reg.device),
                "model": (rec.model if rec is not None and rec.model else None) or reg.model,
                "gen": (rec.gen if rec is not None and rec.gen else None) or reg.gen,
                "fw_ver": (rec.fw_ver if rec is not None and rec.fw_ver else None) or reg.fw_ver,
                "available_update": rec.available_update if rec is not None else None,
                "room": (rec.room if rec is not None and rec.room else None) or reg.room,
                "address": reg.address,
                "transport": reg.transport,
                "adopted_at": instant(reg.adopted_at),
                "last_seen": last_seen if last_seen is not None else instant(reg.seen_at),
                "online": is_online(rec, now) if _heard(rec) else None,
                "compliance": check.to_json() if check is not None else None,
            }
        )
    return rows


def _heard(rec: DeviceRecord | None) -> TypeGuard[DeviceRecord]:
    """Whether the intake ever heard of the device (a registered device shows in
    ``Store.devices()`` before it ever published: it is then neither online nor offline)."""
    return rec is not None and (rec.online is not None or instant(rec.last_seen) is not None)


@router.get(
    "/api/v1/fleet/devices",
    tags=["fleet"],
    summary="The registered devices: model, firmware, update, compliance, last seen, online",
    responses=openapi.READ,
)
async def list_fleet(state: State, _: Viewer) -> Response:
    return JSONResponse({"devices": await fleet_rows(state.store, state.clock())})


@router.get(
    "/api/v1/fleet/profiles",
    tags=["fleet"],
    summary="The profiles the dashboard can plan and apply (<data_dir>/profiles/*.toml)",
    responses={**openapi.READ, 503: _NO_SERVICE},
)
async def list_fleet_profiles(state: State, _: Viewer) -> Response:
    running = _running(state)
    names = fleetctx.list_profiles(running.settings.data_dir)
    return JSONResponse({"profiles": names})


@router.post(
    "/api/v1/fleet/plan",
    tags=["fleet"],
    summary="Start a plan of a profile: each device's drift (admin; nothing is written)",
    status_code=202,
    responses=ACTION,
)
async def start_plan(
    request: Request, state: State, principal: Admin, body: ProfileAction
) -> Response:
    running = _running(state)
    jobs = _jobs(request)
    profile = _profile(running, body.profile)
    targets = await _targets(state.store, body.select or profile.select, body.devices)
    actor = principal.actor

    async def work(job: FleetJob, access: fleetctx.FleetAccess) -> None:
        plans = await fleetctx.plan_and_record(
            state.store, profile, targets, access, concurrency=CONCURRENCY,
            progress=_ApplyProgress(job),
        )  # fmt: skip
        drifted = sum(1 for p in plans if p.pending)
        errors = sum(1 for p in plans if p.error is not None)
        job.report = {"profile": body.profile, "devices": [p.to_json() for p in plans]}
        job.rows = _plan_rows(plans)
        job.result = f"{drifted} drifted, {len(plans) - drifted - errors} in sync, {errors} unread"

    job = _new_job("plan", actor, targets, {"profile": body.profile}, state.clock())
    return _start_job(jobs, running, job, work)


@router.post(
    "/api/v1/fleet/apply",
    tags=["fleet"],
    summary="Start applying a profile (admin; audited unless a dry run)",
    status_code=202,
    responses=ACTION,
)
async def start_apply(
    request: Request, state: State, principal: Admin, body: ApplyAction
) -> Response:
    running = _running(state)
    jobs = _jobs(request)
    profile = _profile(running, body.profile)
    targets = await _targets(state.store, body.select or profile.select, body.devices)
    actor = principal.actor
    options = {"profile": body.profile, "dry_run": body.dry_run}

    async def work(job: FleetJob, access: fleetctx.FleetAccess) -> None:
        report = await fleetctx.apply_and_record(
            state.store, profile, targets, access, actor=actor,
            options=ApplyOptions(dry_run=body.dry_run), progress=_ApplyProgress(job),
        )  # fmt: skip
        job.report = report.to_json()
        job.rows = _apply_rows(report.devices)
        counts = report.summary()
        job.result = (
            fleetctx.apply_result(report)
            + ": "
            + ", ".join(f"{counts[s.value]} {s.value}" for s in Status if counts[s.value])
        )

    job = _new_job("apply", actor, targets, options, state.clock())
    return _start_job(jobs, running, job, work)


@router.post(
    "/api/v1/fleet/firmware",
    tags=["fleet"],
    summary="Start a staged firmware rollout (admin; audited unless a dry run)",
    status_code=202,
    responses=ACTION,
)
async def start_firmware(
    request: Request, state: State, principal: Admin, body: FirmwareAction
) -> Response:
    running = _running(state)
    jobs = _jobs(request)
    try:
        options = RolloutOptions(
            stage=body.stage, canary=body.canary, wave_size=body.wave_size,
            max_failures=body.max_failures, dry_run=body.dry_run,
        )  # fmt: skip
    except (ValueError, KilowatchError) as err:
        raise Problem(400, str(err), slug="invalid-parameter") from None
    targets = await _targets(state.store, body.select or (), body.devices)
    actor = principal.actor
    shown = body.model_dump(exclude={"select", "devices"})

    async def work(job: FleetJob, access: fleetctx.FleetAccess) -> None:
        report = await rollout(
            state.store, targets, options, secrets=access.secrets, mqtt=access.mqtt,
            actor=actor, on_progress=job.rollout_progress, session=access.session,
        )  # fmt: skip
        job.report = report.to_json()
        job.rows = _firmware_rows(report.devices)
        summary = ", ".join(f"{n} {k}" for k, n in report.summary().items() if n and k != "devices")
        job.result = f"{report.result}: {summary}"

    job = _new_job("firmware", actor, targets, shown, state.clock())
    return _start_job(jobs, running, job, work)


def _start_job(
    jobs: FleetJobs,
    running: Running,
    job: FleetJob,
    work: Callable[[FleetJob, fleetctx.FleetAccess], Awaitable[None]],
) -> Response:
    """Start ``job``: ``work`` runs in the background with the service's way to the devices open
    (its data dir's secrets, its broker); the answer is 202 with the job and its ``Location``."""

    async def with_access(job: FleetJob) -> None:
        async with fleetctx.fleet_access(running.settings, _broker(running)) as access:
            await work(job, access)

    jobs.start(job, with_access)
    return _accepted(job)


def _accepted(job: FleetJob) -> Response:
    where = f"/api/v1/fleet/jobs/{job.id}"
    return JSONResponse({"job": job.to_json()}, status_code=202, headers={"Location": where})


@router.get(
    "/api/v1/fleet/jobs/{job}",
    tags=["fleet"],
    summary="A fleet job: progress while it runs, its report once done",
    responses=JOB_READ,
)
async def get_job(
    request: Request,
    _: Viewer,
    job: Annotated[str, Path(min_length=1, max_length=64, examples=["3f2a9c1b7d4e"])],
) -> Response:
    found = _jobs(request).jobs.get(job)
    if found is None:
        raise Problem(404, f"no fleet job {job!r} (jobs are kept until the web app restarts)")
    return JSONResponse({"job": found.to_json()})


@router.get(
    "/api/v1/audit",
    tags=["fleet"],
    summary="The audit log of fleet actions, newest first (viewers may read it)",
    responses=openapi.FILTERED_READ,
)
async def get_audit(
    state: State,
    _: Viewer,
    device: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    action: Annotated[
        str | None, Query(min_length=1, max_length=100, examples=["fleet.apply"])
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_LIMIT)] = 100,
    before: Annotated[float | None, Query(description="unix time: only older entries")] = None,
) -> Response:
    entries = await state.store.audit(limit=limit, device=device, action=action, before=before)
    return JSONResponse({"entries": [entry_json(e) for e in entries]})


# --- the pages ------------------------------------------------------------------------------


def _render(request: Request, name: str, principal: Principal, **context: Any) -> HTMLResponse:
    templates = request.app.state.templates
    response: HTMLResponse = templates.TemplateResponse(
        request, name, {"principal": principal, "site": request.app.state.web.site, **context}
    )
    return response


@router.get("/fleet", include_in_schema=False)
async def fleet_page(request: Request, state: State, principal: Viewer) -> Response:
    rows = await fleet_rows(state.store, state.clock())
    running = state.running
    profiles = fleetctx.list_profiles(running.settings.data_dir) if running else []
    jobs: FleetJobs | None = getattr(request.app.state, "fleet_jobs", None)
    latest = jobs.latest() if jobs is not None else None
    return _render(
        request,
        "fleet.html",
        principal,
        nav="fleet",
        rows=rows,
        service=running is not None,
        profiles=profiles,
        profiles_dir=str(fleetctx.profiles_dir(running.settings.data_dir)) if running else "",
        stages=STAGES,
        job=latest,
    )


@router.get("/fleet/audit", include_in_schema=False)
async def audit_page(
    request: Request,
    state: State,
    principal: Viewer,
    device: Annotated[str, Query(max_length=200)] = "",
    action: Annotated[str, Query(max_length=100)] = "",
    before: Annotated[float | None, Query()] = None,
) -> Response:
    entries = await state.store.audit(
        limit=AUDIT_PAGE, device=device.strip() or None, action=action.strip() or None,
        before=before,
    )  # fmt: skip
    zone = state.site.zone

    def when(ts: float) -> str:
        at = instant(ts)
        if at is None:
            return "–"
        return datetime.fromtimestamp(at, UTC).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")

    shown = [
        {
            **entry_json(e),
            "when": when(e.ts),
            "devices_text": devices_text(e.devices),
            "detail_text": _detail_text(e.detail),
        }
        for e in entries
    ]
    older = entries[-1].ts if len(entries) == AUDIT_PAGE else None
    return _render(
        request, "audit.html", principal, nav="fleet", entries=shown, device=device,
        action=action, older=older,
    )  # fmt: skip


def _detail_text(detail: Any) -> str:
    if not isinstance(detail, dict):
        return ""
    parts = []
    for key, value in detail.items():
        if key == "started":
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items() if v)
        elif isinstance(value, list):
            value = devices_text([str(v) for v in value])
        parts.append(f"{key}: {value}")
    return "; ".join(parts)


__all__ = ["FleetJob", "FleetJobs", "entry_json", "fleet_rows", "router"]
