"""``instruct-render serve``: the page's HTTP layer (Starlette + uvicorn) over :class:`studio.Studio`.

Why Starlette: the page needs a dozen JSON routes, a raw upload with a size limit, file responses and
static files; Starlette (the toolkit under FastAPI and Gradio) does exactly that in a 1 MB wheel with
two dependencies (anyio, typing-extensions), and uvicorn serves it. Gradio, the model-demo convention,
brings some forty packages, loads its front end's fonts from a CDN unless told otherwise and has no
widget for "re-render these bars and compare the takes", which is the point of this page. Everything
the page loads (``static/``: one HTML, one script, one stylesheet) ships with the package: nothing is
fetched from the network.

Safe by default: binds to 127.0.0.1; answers only requests whose Host is this machine (DNS rebinding);
uploads are capped (``--max-upload-mb``) and read by the CLI's own readers (MusicXML with entity
resolution off; a file that declares entities is refused); every error is one line on the page.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_PORT = 8765
logger = logging.getLogger("instruct_serve")


def create_app(studio, allowed_hosts: Sequence[str] = ("127.0.0.1", "localhost", "[::1]", "::1")):
    """The Starlette application serving ``studio`` (a :class:`studio.Studio`)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from .studio import Settings, StudioError

    def error(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": message.splitlines()[0] if message else "error"}, status_code=status)

    async def body_json(request: Request) -> dict:
        try:
            data = await request.json()
        except ValueError:
            raise StudioError("expected a JSON body") from None
        if not isinstance(data, dict):
            raise StudioError("expected a JSON object")
        return data

    async def index(request: Request):
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def info(request: Request):
        return JSONResponse(await run_in_threadpool(studio.info))

    async def open_upload(request: Request):
        from .studio import clean_name, size_text

        name = clean_name(request.query_params.get("name", ""))
        limit = studio.max_upload_bytes
        too_large = f"{name}: file larger than {size_text(limit)}"
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return error(too_large, 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return error(too_large, 413)
            chunks.append(chunk)
        session = await run_in_threadpool(studio.open, name, b"".join(chunks))
        return JSONResponse(studio.session_json(session))

    async def open_example(request: Request):
        data = await body_json(request)
        session = await run_in_threadpool(studio.open_example, str(data.get("name", "")))
        return JSONResponse(studio.session_json(session))

    async def session_get(request: Request):
        session = studio.session(request.path_params["sid"])
        return JSONResponse(await run_in_threadpool(studio.session_json, session))

    async def session_close(request: Request):
        studio.close(request.path_params["sid"])
        return JSONResponse({"closed": True})

    def job_json(job) -> dict:
        import time

        out = {"id": job.id, "state": job.state, "done": job.done, "total": job.total,
               "elapsed_s": round((job.finished or time.time()) - job.started, 1), "error": job.error,
               "preview_bars": len(job.preview) if job.state == "running" else 0}
        if job.take is not None:
            session = studio.session(job.session)
            out["take"] = studio.take_json(session, session.take(job.take))
        return out

    async def render(request: Request):
        data = await body_json(request)
        sid = str(data.get("session", ""))
        settings = Settings.from_json(data.get("settings"))
        first, last, base = data.get("first_bar"), data.get("last_bar"), data.get("base")
        session = studio.session(sid)
        if first is not None or last is not None:  # check the range now: a bad one is an answer, not a job
            n = len(session.bars)
            if not (isinstance(first, int) and isinstance(last, int) and 1 <= first <= last <= n):
                raise StudioError(f"bars {first}-{last}: choose bars within 1-{n}, first <= last")
            session.take(base if isinstance(base, int) else studio.kept_id(session))
        whole = first is None and last is None
        job = studio.submit(sid, lambda progress: studio.render(sid, settings, first, last, base, progress),
                            preview=whole)
        return JSONResponse(job_json(job))

    async def job_get(request: Request):
        return JSONResponse(await run_in_threadpool(job_json, studio.job(request.path_params["jid"])))

    async def preview(request: Request):
        path = await run_in_threadpool(studio.preview_audio, request.path_params["jid"])
        return FileResponse(path, media_type="audio/ogg")

    async def keep(request: Request):
        data = await body_json(request)
        sid, tid = str(data.get("session", "")), data.get("take")
        if not isinstance(tid, int):
            raise StudioError("take: expected a take number")
        studio.keep(sid, tid)
        return JSONResponse(studio.session_json(studio.session(sid)))

    def take_id(request: Request) -> int:
        value = request.path_params["tid"]
        return int(value)

    async def midi(request: Request):
        sid, tid = request.path_params["sid"], take_id(request)
        session = studio.session(sid)
        path = await run_in_threadpool(studio.midi, sid, tid)
        stem = Path(session.name).stem
        label = "score-reference" if tid == 0 else f"take{tid}"
        return FileResponse(path, media_type="audio/midi", filename=f"{stem}-{label}.mid")

    async def final_midi(request: Request):
        sid = request.path_params["sid"]
        session = studio.session(sid)
        path = await run_in_threadpool(studio.midi, sid, None)
        return FileResponse(path, media_type="audio/midi", filename=f"{Path(session.name).stem}-performance.mid")

    async def audio(request: Request):
        path = await run_in_threadpool(studio.audio, request.path_params["sid"], take_id(request))
        return FileResponse(path, media_type="audio/ogg")

    async def roll(request: Request):
        path, _ = await run_in_threadpool(studio.piano_roll, request.path_params["sid"], take_id(request))
        return FileResponse(path, media_type="image/png")

    async def roll_axis(request: Request):
        _, axis = await run_in_threadpool(studio.piano_roll, request.path_params["sid"], take_id(request))
        return JSONResponse(axis.__dict__)

    async def curves(request: Request):
        path = await run_in_threadpool(studio.curves, request.path_params["sid"], take_id(request))
        return FileResponse(path, media_type="image/png")

    async def tokens(request: Request):
        session = studio.session(request.path_params["sid"])
        tid = take_id(request)
        perf = session.reference if tid == 0 else session.take(tid).perf
        from instruct_tokenizer.encode import split_bars

        return JSONResponse({"bars": split_bars(perf)[1]})

    async def on_studio_error(request: Request, exc: StudioError):
        return error(str(exc), exc.status)

    async def on_error(request: Request, exc: Exception):
        logger.exception("request failed: %s", request.url.path)
        return error(f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", 500)

    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code == 404:
            return error(f"not found: {request.url.path}", 404)
        return error(f"{request.method} {request.url.path}: {exc.detail}", exc.status_code)

    take_routes = [
        Route("/api/take/{sid}/{tid:int}/performance.mid", midi),
        Route("/api/take/{sid}/{tid:int}/audio.oga", audio),
        Route("/api/take/{sid}/{tid:int}/roll.png", roll),
        Route("/api/take/{sid}/{tid:int}/roll.json", roll_axis),
        Route("/api/take/{sid}/{tid:int}/curves.png", curves),
        Route("/api/take/{sid}/{tid:int}/tokens", tokens),
    ]
    routes = [
        Route("/", index),
        Route("/api/info", info),
        Route("/api/open", open_upload, methods=["POST"]),
        Route("/api/example", open_example, methods=["POST"]),
        Route("/api/session/{sid}", session_get),
        Route("/api/session/{sid}", session_close, methods=["DELETE"]),
        Route("/api/session/{sid}/final.mid", final_midi),
        Route("/api/render", render, methods=["POST"]),
        Route("/api/job/{jid}", job_get),
        Route("/api/job/{jid}/preview.oga", preview),
        Route("/api/keep", keep, methods=["POST"]),
        *take_routes,
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    hosts = list(allowed_hosts)
    app = Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
                    exception_handlers={StudioError: on_studio_error, HTTPException: http_error, Exception: on_error},
                    max_body_size=studio.max_upload_bytes + 2 ** 20)
    app.state.studio = studio
    return app


# --------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    from museformer.render import DEFAULT_CHECKPOINT

    p = argparse.ArgumentParser(prog="instruct-render serve",
                                description="a local web page to render a score, hear it, see it and re-render "
                                            "a passage")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 serves the network, "
                        "with no login)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                   help="model file (.pt; default: the released model)")
    p.add_argument("--data", default=None, help="fairseq data dir with dict.*.txt (for training checkpoints)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest score file accepted (MiB, default 20)")
    p.add_argument("--soundfont", default=None,
                   help="General MIDI soundfont (.sf2/.sf3; default: $INSTRUCT_SOUNDFONT, else Debian's FluidR3 or "
                        "TimGM6mb)")
    return p


def _allowed_hosts(host: str) -> Sequence[str]:
    local = ["127.0.0.1", "localhost", "[::1]", "::1"]
    if host in ("0.0.0.0", "::", ""):
        return ["*"]
    return local + ([host] if host not in local else [])


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from museformer.render import RenderError

    from .audio import Synth
    from .studio import Studio, StudioError

    examples = Path(__file__).resolve().parents[2] / "data" / "vienna4x22" / "musicxml"
    import os

    studio = Studio(args.checkpoint, args.data, synth=Synth.find(soundfont=args.soundfont), examples=examples,
                    max_upload_bytes=int(args.max_upload_mb * 2 ** 20))
    try:
        studio.renderer()  # load the model now: a bad checkpoint is an error line, not a broken page
    except (RenderError, StudioError) as e:
        studio.shutdown()
        print(f"instruct-render serve: error: {e}", file=sys.stderr)
        return 1
    import uvicorn

    app = create_app(studio, _allowed_hosts(args.host))
    if studio.synth.missing:
        print(f"instruct-render serve: {studio.synth.missing}", file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"instruct-render serve: listening on {args.host}: anyone who reaches this machine can use it",
              file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"instruct-render serve: open http://{shown}:{args.port}/ (Ctrl-C stops; temporary files in {studio.root})",
          flush=True)
    # the markings of uploaded MusicXML are cached with the server's other files, deleted when it stops
    cache_before = os.environ.get("INSTRUCT_TOKENIZER_CACHE")
    os.environ["INSTRUCT_TOKENIZER_CACHE"] = str(studio.root / "cache")
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        if cache_before is None:
            os.environ.pop("INSTRUCT_TOKENIZER_CACHE", None)
        else:
            os.environ["INSTRUCT_TOKENIZER_CACHE"] = cache_before
        studio.shutdown()
    return 0
