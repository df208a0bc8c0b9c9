"""The review page: FastAPI, HTML rendered on the server by Jinja2, one small plain-JS file for the keys.

Routes: `GET /` (the page at queue position `?at=N`, filters `?label=&status=&source=`, and `?reviewer=`
once, then a cookie), `GET /api/record` (one record's HTML, for n / p), `POST /api/action` (accept,
edit, reject; answers with the next record's HTML), `POST /api/undo`, `POST /api/prefer` (compare
mode), `GET /api/stats`, `GET /health`. Every action is committed before the reply, so killing the
server or closing the browser loses nothing. Record text is untrusted and always escaped
(Jinja autoescape); no page loads anything from elsewhere.

On a host other than loopback a token is required: given once as `?token=`, then kept in an HttpOnly
cookie, compared in constant time (hmac.compare_digest).
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel

from protege.errors import ProtegeError
from protege.review.compare import preference_summary, record_verdict, undo_verdict
from protege.review.session import FILTERS, Session, source_of
from protege.review.stats import review_stats

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))
TOKEN_COOKIE = "protege_review_token"
REVIEWER_COOKIE = "protege_reviewer"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class ActionBody(BaseModel):
    idx: int
    at: int
    action: str
    answer: str | None = None
    note: str | None = None
    seconds: float | None = None
    filters: dict[str, str] = {}


class PreferBody(BaseModel):
    idx: int
    at: int
    choice: str
    """left | right | tie | both_bad: what the reviewer saw; stored in model terms."""
    seconds: float | None = None
    filters: dict[str, str] = {}


class UndoBody(BaseModel):
    at: int = 0
    filters: dict[str, str] = {}


def needs_token(host: str) -> bool:
    return host not in LOOPBACK


def create_app(session: Session, token: str | None = None) -> FastAPI:
    app = FastAPI(title="protege review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.session = session
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    if token:
        _install_token(app, token)

    @app.exception_handler(ProtegeError)
    async def _refused(_: Request, e: ProtegeError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=422)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "dataset": f"{session.name}@{session.info['version']}"}

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request, at: int | None = None) -> Response:
        reviewer, filters = _reviewer(request, session), _filters(request)
        if at is None:
            at = session.next_position(reviewer, filters)
        ctx = {"request": request, **_context(session, reviewer, filters, at)}
        response = TEMPLATES.TemplateResponse(request, "page.html", ctx)
        if request.query_params.get("reviewer"):
            response.set_cookie(REVIEWER_COOKIE, reviewer, httponly=True, samesite="strict")
        return response

    @app.get("/api/record")
    def record(request: Request, at: int) -> dict[str, Any]:
        reviewer, filters = _reviewer(request, session), _filters(request)
        return _fragment(request, session, reviewer, filters, at)

    @app.post("/api/action")
    def action(request: Request, body: ActionBody) -> dict[str, Any]:
        reviewer = _reviewer(request, session)
        _check_index(session, body.idx)
        state = session.act(body.idx, reviewer, body.action, body.answer, body.note, body.seconds)
        nxt = session.next_position(reviewer, body.filters, after=body.at)
        out = _fragment(request, session, reviewer, body.filters, nxt)
        return {**out, "stored": {"idx": body.idx, "status": state.status, "answer": state.answer}}

    @app.post("/api/undo")
    def undo(request: Request, body: UndoBody) -> dict[str, Any]:
        from protege.review.actions import undo_last

        reviewer = _reviewer(request, session)
        if session.sides is not None:
            idx = undo_verdict(session.store, session.name, reviewer)
            message = "nothing left to undo" if idx is None else f"verdict on record {idx} undone"
        else:
            done = undo_last(session.store, session.name, reviewer)
            idx = done["idx"] if done else None
            message = "nothing left to undo" if done is None else f"{done['undid']} of record {idx} undone"
        q = session.queue(body.filters)
        at = q.index(idx) if idx is not None and idx in q else body.at
        return {**_fragment(request, session, reviewer, body.filters, at, idx), "message": message}

    @app.post("/api/prefer")
    def prefer(request: Request, body: PreferBody) -> dict[str, Any]:
        reviewer = _reviewer(request, session)
        if session.sides is None:
            raise_usage("this page is not in compare mode (start it with --compare A,B)")
        _check_index(session, body.idx)
        view = session.view(body.idx, reviewer)
        shown = view["pair"]["shown_left"]
        other = "b" if shown == "a" else "a"
        verdict = {"left": shown, "right": other}.get(body.choice, body.choice)
        record_verdict(session.store, session.info, body.idx, session.records[body.idx], reviewer, session.sides,
                       shown, verdict, body.seconds)  # fmt: skip
        nxt = session.next_position(reviewer, body.filters, after=body.at)
        return _fragment(request, session, reviewer, body.filters, nxt)

    @app.get("/api/stats")
    def stats() -> dict[str, Any]:
        out = review_stats(session.store, session.info, session.records, session.preds, session.check.kind)
        out["preferences"] = preference_summary(session.store, session.name)
        return out

    return app


class UsageRefused(ProtegeError):
    pass


def raise_usage(message: str) -> None:
    raise UsageRefused(message)


def _check_index(session: Session, idx: int) -> None:
    if not 0 <= idx < len(session.records):
        raise_usage(f"record {idx}: the dataset has records 0-{len(session.records) - 1}")


def _reviewer(request: Request, session: Session) -> str:
    name = request.query_params.get("reviewer") or request.cookies.get(REVIEWER_COOKIE) or session.settings.reviewer
    return name.strip()[:80] or session.settings.reviewer


def _filters(request: Request) -> dict[str, str]:
    return {k: v for k in FILTERS if (v := request.query_params.get(k))}


def _context(session: Session, reviewer: str, filters: dict[str, str], at: int | None) -> dict[str, Any]:
    q = session.queue(filters)
    view = session.view(q[at], reviewer) if at is not None and 0 <= at < len(q) else None
    choices = {
        "label": sorted({a for r in session.records if (a := r.label or r.completion) is not None})[:200],
        "status": ["pending", "accepted", "edited", "rejected"],
        "source": sorted({source_of(r) for r in session.records}),
    }
    return {
        "session": session,
        "name": f"{session.name}@{session.info['version']}",
        "title": session.settings.title or f"review {session.name}@{session.info['version']}",
        "reviewer": reviewer,
        "filters": filters,
        "choices": choices,
        "view": view,
        "at": at,
        "size": len(q),
        "progress": session.progress(),
        "compare": session.sides is not None,
        "sides": [s.name for s in session.sides] if session.sides else None,
        "preferences": preference_summary(session.store, session.name) if session.sides else None,
        "reviewers": _between_reviewers(session) if session.settings.overlap > 0 else None,
    }


def _between_reviewers(session: Session) -> dict[str, Any]:
    """Agreement and Cohen's kappa between reviewers on the overlap records, for the progress bar."""
    from protege.review.actions import all_actions, reviewer_verdicts
    from protege.review.stats import between_reviewers

    verdicts = reviewer_verdicts(all_actions(session.store, session.name))
    return between_reviewers(verdicts, session.check.kind == "label")


def _fragment(
    request: Request, session: Session, reviewer: str, filters: dict[str, str], at: int | None, idx: int | None = None
) -> dict[str, Any]:
    """The record area's HTML (and the progress bar's) for queue position `at`."""
    ctx = _context(session, reviewer, filters, at)
    if idx is not None and (ctx["view"] is None or ctx["view"]["idx"] != idx):
        ctx["view"] = session.view(idx, reviewer)
    html = TEMPLATES.get_template("_record.html").render(ctx)
    progress = TEMPLATES.get_template("_progress.html").render(ctx)
    return {"html": html, "progress": progress, "at": at, "idx": ctx["view"]["idx"] if ctx["view"] else None,
            "query": urlencode({**filters, **({"at": at} if at is not None else {})})}  # fmt: skip


def _install_token(app: FastAPI, token: str) -> None:
    expected = token.encode()

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Response:
        given = request.query_params.get("token")
        if given is not None and hmac.compare_digest(given.encode(), expected):
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            response = RedirectResponse(f"{request.url.path}{'?' + urlencode(rest) if rest else ''}", status_code=303)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return response
        cookie = request.cookies.get(TOKEN_COOKIE, "")
        if hmac.compare_digest(cookie.encode(), expected):
            return await call_next(request)
        return HTMLResponse(
            "<!doctype html><title>token required</title><p>This review page needs its token: open the address "
            "<code>protege review serve</code> printed (it ends in <code>?token=...</code>).</p>",
            status_code=401,
        )


def page_url(host: str, port: int, token: str | None = None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def check_host(host: str, token: str | None) -> None:
    """A page reachable from other machines must have a token."""
    if needs_token(host) and not token:
        raise_user(f"--host {host}: the page would be reachable from other machines; give a token "
                   "(--token or PROTEGE_REVIEW_TOKEN), or bind to 127.0.0.1")  # fmt: skip


def raise_user(message: str) -> None:
    from protege.errors import UserError

    raise UserError(message)


def serve_forever(app: FastAPI, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


class Background:
    """The page served from a thread while the caller waits on the database (`protege rounds`)."""

    def __init__(self, app: FastAPI, host: str, port: int):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
        self.thread: Any = None

    def __enter__(self) -> Background:
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.server.started:
            raise_user(f"the review page could not start on {self.server.config.host}:{self.server.config.port}")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
