"""The HTTP face of `SpeechService`: an OpenAI-compatible speech endpoint, voices, health, a web page.

    POST   /v1/audio/speech     {"model", "input", "voice", "response_format", "speed"} -> streamed audio
    GET    /v1/voices           the voices: "default" plus the uploaded ones
    POST   /v1/voices           multipart: name, file, transcript (optional), overwrite (optional)
    DELETE /v1/voices/{name}
    GET    /health              model, sample rate, queue, limits
    GET    /                    the web page (static/)

Errors have OpenAI's shape, {"error": {"message", "type", "code"}}, so the `openai` client
raises them with their message. Status codes: 401 bad or missing key, 404 unknown voice,
409 name taken, 411/413 upload without length / too large, 415 not audio, 422 invalid input,
429 queue full (with Retry-After), 504 timed out before any audio was ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from tokentts.errors import TokenttsError
from tokentts.model import LoadedModel
from tokentts.serving.config import ServeConfig
from tokentts.serving.service import DEFAULT_VOICE, SpeechService, UnsupportedAudio, UploadTooLarge
from tokentts.serving.streaming import MAX_SPEED, MEDIA_TYPES, MIN_SPEED, RESPONSE_FORMATS, ResponseFormat
from tokentts.serving.voices import VOICE_NAME, VOICE_NAME_RULE, Voice, VoiceExists, VoiceNotFound
from tokentts.serving.worker import Job, JobTimeout, QueueFull, SerialWorker

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
# Multipart framing and the small form fields around the file.
FORM_OVERHEAD_BYTES = 64 * 1024
ERROR_STATUS: dict[type[TokenttsError], int] = {
    VoiceNotFound: 404, VoiceExists: 409, UploadTooLarge: 413, UnsupportedAudio: 415,
}
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
ERROR_TYPES = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error", 504: "timeout_error"}


# ---- request and response bodies ----------------------------------------------------------------


class VoiceRef(BaseModel):
    id: str = Field(description="voice name")


class SpeechRequest(BaseModel):
    model: str = Field(description="accepted for compatibility; the server speaks with the one model it loaded")
    input: str = Field(description="text to speak (at most the server's max_input_chars, 4096 by default)")
    voice: str | VoiceRef = Field(description=f"'{DEFAULT_VOICE}' or the name of an uploaded voice (GET /v1/voices)")
    response_format: ResponseFormat = Field(
        default="mp3", description="pcm is raw 16-bit little-endian mono at the X-Sample-Rate header's rate"
    )
    speed: float = Field(default=1.0, ge=MIN_SPEED, le=MAX_SPEED, description="tempo factor; pitch is kept")
    stream_format: Literal["audio"] = Field(default="audio", description="audio bytes, streamed as they are generated")
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1, description="tokentts extension: reproducible sampling")

    @property
    def voice_name(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice


class VoiceInfo(BaseModel):
    name: str
    builtin: bool
    description: str = ""
    transcript: str | None = None
    duration: float | None = Field(default=None, description="seconds of reference audio")
    transcribed: bool | None = Field(default=None, description="whether the transcript came from speech recognition")
    created: str | None = None

    @classmethod
    def of(cls, voice: Voice) -> VoiceInfo:
        return cls(builtin=False, description="uploaded reference clip", **{k: getattr(voice, k) for k in
                   ("name", "transcript", "duration", "transcribed", "created")})


class VoiceList(BaseModel):
    voices: list[VoiceInfo]


class QueueState(BaseModel):
    running: int
    waiting: int
    max_waiting: int


class Limits(BaseModel):
    max_input_chars: int
    max_seconds: float
    max_upload_bytes: int
    min_voice_seconds: float
    max_voice_seconds: float
    request_timeout: float


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    adapter: str | None
    sample_rate: int
    auth_required: bool
    queue: QueueState
    limits: Limits
    response_formats: list[str]


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: int


class ErrorBody(BaseModel):
    error: ErrorDetail


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in codes}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status, headers=headers)


# ---- upload size limit, before the body is parsed -----------------------------------------------


class UploadLimit:
    """Refuses a voice upload by its Content-Length before reading it: FastAPI parses the whole
    multipart body (spooling it to disk) before any route code could look at its size."""

    def __init__(self, app: ASGIApp, path: str, max_bytes: int):
        self.app, self.path, self.max_bytes = app, path, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == self.path:
            length = dict(scope["headers"]).get(b"content-length")
            response = None
            if length is None or not length.isdigit():
                response = _error(411, "send the upload with a Content-Length header")
            elif int(length) > self.max_bytes + FORM_OVERHEAD_BYTES:
                response = _error(413, f"the upload is larger than {self.max_bytes / 1e6:g} MB")
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ---- streaming a job ----------------------------------------------------------------------------


class JobResponse(StreamingResponse):
    """A streamed job that is cancelled however the response ends: done, client gone, or error.

    Starlette stops iterating when the client disconnects but leaves the iterator to the
    garbage collector; cancelling here frees the worker at its next chunk.
    """

    def __init__(
        self, worker: SerialWorker, job: Job, first: bytes, rest: AsyncIterator[bytes], request_id: str, **kwargs: Any
    ):
        async def body() -> AsyncIterator[bytes]:
            yield first
            async for data in rest:
                yield data

        super().__init__(body(), **kwargs)
        self.worker, self.job, self.request_id = worker, job, request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except JobTimeout:
            # Too late for a status code. Returning with the body unfinished makes the server drop the
            # connection, so the client sees an incomplete response rather than a complete-looking short one.
            log.warning("request %s: cut off by the request timeout", self.request_id)
        finally:
            self.worker.cancel(self.job)


async def _first_chunk(results: AsyncIterator[bytes], request: Request) -> bytes | None:
    """Wait for the first audio while watching the connection; None when the client left, so that
    a request that waits in the queue gives its slot back as soon as its client is gone."""
    task = asyncio.ensure_future(anext(results, b""))
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return None


# ---- the application ----------------------------------------------------------------------------


def create_app(config: ServeConfig, loaded: LoadedModel) -> FastAPI:
    service = SpeechService(config, loaded)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(
        lifespan=lifespan,
        title="tokentts",
        summary="Token-based TTS server with an OpenAI-compatible speech endpoint",
        version="1",
        docs_url="/docs",
        redoc_url=None,
    )
    app.add_middleware(UploadLimit, path="/v1/voices", max_bytes=config.max_upload_bytes)

    bearer = HTTPBearer(auto_error=False, description="the server's --api-key")

    # A default value rather than Annotated: `bearer` is local, and string annotations are resolved in module scope.
    async def check_api_key(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        assert config.api_key is not None
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), config.api_key.encode()):
            raise HTTPException(
                401, "missing or wrong API key (Authorization: Bearer KEY)", {"WWW-Authenticate": "Bearer"}
            )

    auth = [Depends(check_api_key)] if config.api_key else []

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return _error(422, problems)

    @app.exception_handler(TokenttsError)
    async def tokentts_error(request: Request, exc: TokenttsError) -> JSONResponse:
        return _error(ERROR_STATUS.get(type(exc), 422), str(exc))

    @app.post(
        "/v1/audio/speech",
        dependencies=auth,
        response_class=Response,
        responses={
            200: {"description": "audio, streamed", "content": {t: {} for t in sorted(set(MEDIA_TYPES.values()))}},
            **_responses(401, 404, 422, 429, 504),
        },
    )
    async def speech(body: SpeechRequest, request: Request) -> Response:
        """Speak `input` in `voice` (OpenAI's `audio.speech.create`); the audio streams as it is generated."""
        # A client's own id (for its logs) if it is a plain token, else a fresh one; echoed on every answer.
        request_id = request.headers.get("x-request-id", "")
        request_id = request_id if REQUEST_ID.match(request_id) else uuid.uuid4().hex
        echo = {"X-Request-Id": request_id}
        text = " ".join(body.input.split())
        if not text:
            return _error(422, "input is empty", echo)
        try:
            text.encode("utf-8")  # JSON can carry lone surrogates ("\ud800"), which no tokenizer takes
        except UnicodeEncodeError:
            return _error(422, "input is not valid Unicode text (it has unpaired surrogates)", echo)
        if len(body.input) > config.max_input_chars:
            return _error(422, f"input is {len(body.input)} characters; the limit is {config.max_input_chars}", echo)
        voice = service.find_voice(body.voice_name)
        try:
            job = service.worker.submit(
                lambda: service.speech_chunks(text, voice, body.response_format, body.speed, body.seed),
                timeout=config.request_timeout,
            )
        except QueueFull:
            log.info("request %s refused: queue full", request_id)
            return _error(429, "the server is busy; retry shortly", {**echo, "Retry-After": "1"})
        started = time.monotonic()
        results = service.worker.results(job)
        # Errors before the first audio (timeout, bad text) can still be proper HTTP errors.
        try:
            first = await _first_chunk(results, request)
        except JobTimeout:
            return _error(504, f"no audio within the {config.request_timeout:g} s request timeout", echo)
        if first is None:
            service.worker.cancel(job)
            log.info("request %s: client left before any audio", request_id)
            return Response(status_code=499)
        log.info("request %s: voice %s, %d chars, %s, first audio after %.2f s",
                 request_id, body.voice_name, len(text), body.response_format, time.monotonic() - started)
        headers = {**echo, "X-Sample-Rate": str(service.sample_rate)}
        return JobResponse(
            service.worker, job, first, results, request_id,
            media_type=MEDIA_TYPES[body.response_format], headers=headers,
        )

    @app.get("/v1/voices", dependencies=auth, response_model=VoiceList, responses=_responses(401))
    async def list_voices() -> VoiceList:
        builtin = VoiceInfo(name=DEFAULT_VOICE, builtin=True, description=service.default_voice_description)
        return VoiceList(voices=[builtin, *(VoiceInfo.of(v) for v in service.voices.list())])

    @app.post(
        "/v1/voices",
        dependencies=auth,
        status_code=201,
        response_model=VoiceInfo,
        responses=_responses(401, 409, 411, 413, 415, 422),
    )
    async def upload_voice(
        name: Annotated[str, Form(pattern=VOICE_NAME.pattern, description=VOICE_NAME_RULE)],
        file: Annotated[UploadFile, File(description="reference clip: wav, flac, mp3, ogg/opus, m4a or webm")],
        transcript: Annotated[
            str | None, Form(max_length=2000, description="what the clip says; transcribed when missing")
        ] = None,
        overwrite: Annotated[bool, Form(description="replace a voice of the same name")] = False,
    ) -> VoiceInfo:
        """Add a voice from a reference clip (and its transcript, else speech recognition writes one)."""
        data = await file.read(config.max_upload_bytes + 1)
        voice = await run_in_threadpool(
            service.add_voice, name, data, filename=file.filename, content_type=file.content_type,
            transcript=transcript, overwrite=overwrite,
        )
        return VoiceInfo.of(voice)

    @app.delete("/v1/voices/{name}", dependencies=auth, status_code=204, responses=_responses(401, 404, 422))
    async def delete_voice(
        name: Annotated[str, PathParam(pattern=VOICE_NAME.pattern, description=VOICE_NAME_RULE)],
    ) -> Response:
        service.delete_voice(name)
        return Response(status_code=204)

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        return Health(
            status="ok",
            model=loaded.source,
            adapter=config.adapter,
            sample_rate=service.sample_rate,
            auth_required=config.api_key is not None,
            queue=QueueState(**service.worker.stats()),
            limits=Limits(
                max_input_chars=config.max_input_chars,
                max_seconds=config.max_seconds,
                max_upload_bytes=config.max_upload_bytes,
                min_voice_seconds=config.min_voice_seconds,
                max_voice_seconds=config.max_voice_seconds,
                request_timeout=config.request_timeout,
            ),
            response_formats=list(RESPONSE_FORMATS),
        )

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
