"""`tokentts serve`: a real uvicorn server on 127.0.0.1 with the tiny random CSM, driven by the
official `openai` client, httpx, schemathesis and a headless Chromium."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import numpy as np
import openai
import pytest
import uvicorn

from tokentts.audio import SAMPLE_RATE, decode_audio, encode_audio
from tokentts.audio.synth import EspeakVoice, synthesize_espeak, synthesize_piper
from tokentts.cli import main
from tokentts.model import LoadedModel, load_model
from tokentts.serving import ServeConfig, create_app
from tokentts.serving.streaming import RESPONSE_FORMATS
from tokentts.serving.voices import VoiceStore
from tokentts.serving.worker import JobTimeout, QueueFull, SerialWorker

TEXT = "Hello there, this is a test of the speech server."
# Test servers generate at most 1.2 s per request: 15 codec frames of 80 ms (the random model never stops by itself).
MAX_SECONDS = 1.2
ANSWER_SAMPLES = 28_800


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tiny_dir) -> LoadedModel:
    return load_model(tiny_dir, device="cpu")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def live_server(loaded: LoadedModel, data_dir: Path, **settings) -> Iterator[str]:
    """A uvicorn server in a thread; yields its base URL and stops it afterwards."""
    settings = {"max_seconds": MAX_SECONDS, "asr_model": "bundled", **settings}
    config = ServeConfig(model=loaded.source, data_dir=data_dir, port=free_port(), **settings)
    app = create_app(config, loaded)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=config.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory) -> Iterator[str]:
    """The shared server: short answers, small uploads, a short queue."""
    data_dir = tmp_path_factory.mktemp("serve")
    with live_server(tiny_model, data_dir, max_upload_mb=0.5, max_queue=4, max_input_chars=500) as url:
        yield url


def client(url: str, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0)


def speech_pcm(url: str, text: str = TEXT, seed: int | None = None, voice: str = "default", **kwargs) -> np.ndarray:
    """16-bit samples; `seed` is a tokentts extension, sent beside OpenAI's fields."""
    response = client(url).audio.speech.create(
        model="tokentts", input=text, voice=voice, response_format="pcm", extra_body={"seed": seed}, **kwargs
    )
    return np.frombuffer(response.content, dtype="<i2")


def speak_clip(text: str = "The quick brown fox jumps over the lazy dog.") -> bytes:
    return encode_audio(synthesize_espeak(text, EspeakVoice(variant="m3")), SAMPLE_RATE, "wav")


def upload(
    url: str, name: str, data: bytes, filename: str = "clip.wav", content_type: str = "audio/wav",
    headers: dict[str, str] | None = None, **fields: str | bool,
) -> httpx.Response:
    form = {"name": name, **{k: str(v).lower() if isinstance(v, bool) else v for k, v in fields.items()}}
    files = {"file": (filename, data, content_type)}
    return httpx.post(f"{url}/v1/voices", data=form, files=files, headers=headers, timeout=60)


def wait_until_idle(url: str, within: float) -> None:
    """Poll /health until nothing runs or waits; the worker stops an abandoned job at its next chunk."""
    deadline = time.monotonic() + within
    while (queue := httpx.get(f"{url}/health").json()["queue"])["running"] or queue["waiting"]:
        assert time.monotonic() < deadline, f"still busy after {within} s: {queue}"
        time.sleep(0.02)


def opus_input_rate(data: bytes) -> int:
    """The input sample rate field of an Ogg Opus stream's OpusHead packet (Opus itself always decodes at 48 kHz)."""
    head = data.index(b"OpusHead")
    return struct.unpack_from("<I", data, head + 12)[0]


# ---- speech ------------------------------------------------------------------------------------


def test_speech_in_every_format_decodes_at_the_model_rate(server):
    api = client(server)
    reference = speech_pcm(server, seed=11)
    assert len(reference) == ANSWER_SAMPLES
    for fmt in RESPONSE_FORMATS:
        raw = api.audio.speech.with_raw_response.create(
            model="tts-1", input=TEXT, voice="default", response_format=fmt, extra_body={"seed": 11}
        )
        data = raw.content
        assert raw.headers["x-sample-rate"] == str(SAMPLE_RATE)
        if fmt == "pcm":
            assert raw.headers["content-type"] == "audio/pcm"
            assert np.array_equal(np.frombuffer(data, dtype="<i2"), reference)
            continue
        assert raw.headers["content-type"].startswith("audio/")
        rate = opus_input_rate(data) if fmt == "opus" else av.open(io.BytesIO(data)).streams.audio[0].sample_rate
        assert rate == SAMPLE_RATE, fmt
        wav = decode_audio(data, SAMPLE_RATE, name=fmt)
        assert abs(len(wav) - len(reference)) < 0.1 * SAMPLE_RATE, fmt  # lossy codecs add priming and padding
        if fmt in ("wav", "flac"):  # lossless: the very same samples as the pcm answer
            assert np.abs(wav * 32768 - reference).max() <= 2.0, fmt  # FFmpeg rounds to 16 bits its own way


def test_speed_changes_duration_and_voice_can_be_an_object(server):
    normal = speech_pcm(server, seed=5)
    fast = speech_pcm(server, seed=5, speed=2.0)
    slow = speech_pcm(server, seed=5, speed=0.5)
    assert abs(len(fast) / len(normal) - 0.5) < 0.05
    assert abs(len(slow) / len(normal) - 2.0) < 0.1
    as_object = client(server).audio.speech.create(
        model="tokentts", input=TEXT, voice={"id": "default"}, response_format="pcm", extra_body={"seed": 5}
    )
    assert np.array_equal(np.frombuffer(as_object.content, dtype="<i2"), normal)


def test_bad_speech_requests_get_clear_4xx(server):
    api = client(server)
    with pytest.raises(openai.NotFoundError, match="no voice named 'nobody'"):
        api.audio.speech.create(model="tokentts", input=TEXT, voice="nobody")
    with pytest.raises(openai.UnprocessableEntityError, match="limit is 500"):
        api.audio.speech.create(model="tokentts", input="a" * 501, voice="default")
    with pytest.raises(openai.UnprocessableEntityError, match="input is empty"):
        api.audio.speech.create(model="tokentts", input=" \n ", voice="default")
    for body in ({"input": TEXT, "voice": "default"}, {"model": "x", "input": TEXT, "voice": "default", "speed": 9},
                 {"model": "x", "input": TEXT, "voice": "default", "response_format": "ogg"},
                 {"model": "x", "input": TEXT, "voice": "../../etc/passwd"}):
        response = httpx.post(f"{server}/v1/audio/speech", json=body)
        assert response.status_code in (404, 422), body
        assert response.json()["error"]["message"]
    lone_surrogate = b'{"model": "x", "input": "\\ud800 hello", "voice": "default"}'
    response = httpx.post(
        f"{server}/v1/audio/speech", content=lone_surrogate, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422 and "Unicode" in response.json()["error"]["message"]


def test_streaming_sends_audio_long_before_generation_ends(tiny_model, tmp_path):
    with live_server(tiny_model, tmp_path, max_seconds=16.0) as url:
        started = time.monotonic()
        arrivals = []
        with client(url).audio.speech.with_streaming_response.create(
            model="tokentts", input=TEXT, voice="default", response_format="pcm"
        ) as response:
            for data in response.iter_bytes():
                arrivals.append((time.monotonic() - started, len(data)))
    total = arrivals[-1][0]
    assert sum(n for _, n in arrivals) == 16 * SAMPLE_RATE * 2
    assert len(arrivals) >= 10
    # The first audio (2 codec frames) arrives after a small fraction of the whole generation.
    assert arrivals[0][0] < 0.25 * total, arrivals[:3]


def test_twenty_concurrent_requests_are_answered_or_refused_never_mixed_up(tiny_model, tmp_path):
    texts = [f"Request number {i}: the {'quick ' * (i % 4)}brown fox." for i in range(20)]
    results: list[object] = [None] * 20
    barrier = threading.Barrier(20)

    with live_server(tiny_model, tmp_path, max_seconds=2.0, max_queue=4) as url:

        def ask(i: int) -> None:
            api = client(url)
            barrier.wait()
            try:
                raw = api.audio.speech.with_raw_response.create(
                    model="tokentts", input=texts[i], voice="default", response_format="pcm",
                    extra_body={"seed": i}, extra_headers={"X-Request-Id": f"req-{i}"},
                )
                assert raw.headers["x-request-id"] == f"req-{i}"
                results[i] = raw.content
            except openai.RateLimitError as exc:
                assert exc.response.headers["retry-after"]
                results[i] = 429

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        answered = [i for i, r in enumerate(results) if isinstance(r, bytes)]
        refused = [i for i, r in enumerate(results) if r == 429]
        assert sorted(answered + refused) == list(range(20)), results  # none lost, none failed otherwise
        assert len(answered) >= 5 and refused  # one generating + four waiting fit; the rest are turned away
        # Each answer is exactly what its own text and seed give when asked alone.
        alone = {i: speech_pcm(url, texts[i], seed=i).tobytes() for i in answered}
        assert all(results[i] == alone[i] for i in answered)
        assert len(set(alone.values())) == len(alone)  # and those answers differ from one another


def test_busy_server_answers_429_and_a_client_that_leaves_frees_its_slot(tiny_model, tmp_path):
    with live_server(tiny_model, tmp_path, max_seconds=30.0, max_queue=0) as url:
        body = {"model": "tokentts", "input": TEXT, "voice": "default", "response_format": "pcm"}
        with httpx.Client(base_url=url, timeout=30) as http:
            with http.stream("POST", "/v1/audio/speech", json=body) as response:
                assert response.status_code == 200
                chunks = response.iter_raw()  # kept: a discarded iterator closes the connection when collected
                next(chunks)
                busy = httpx.post(f"{url}/v1/audio/speech", json=body)
                assert busy.status_code == 429 and busy.headers["retry-after"]
                assert busy.json()["error"]["type"] == "rate_limit_error"
                assert httpx.get(f"{url}/health").json()["queue"]["running"] == 1
            left = time.monotonic()
        # 30 s of audio takes the tiny model several seconds; a client gone must not hold the worker that long.
        wait_until_idle(url, within=1.0 - (time.monotonic() - left))
        with httpx.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
            assert response.status_code == 200  # the slot is free again


def test_request_timeout_cuts_a_stream_that_runs_over(tiny_model, tmp_path):
    with live_server(tiny_model, tmp_path, max_seconds=60.0, max_queue=1, request_timeout=0.5) as url:
        body = {"model": "tokentts", "input": TEXT, "voice": "default", "response_format": "wav"}

        def outcome() -> str:
            with httpx.stream("POST", f"{url}/v1/audio/speech", json=body, timeout=30) as response:
                if response.status_code != 200:
                    return str(response.status_code)
                try:
                    response.read()
                except httpx.RemoteProtocolError:
                    return "cut"
                return "complete"

        results: list[str] = []
        first = threading.Thread(target=lambda: results.append(outcome()))
        first.start()
        while not httpx.get(f"{url}/health").json()["queue"]["running"]:
            time.sleep(0.01)
        queued = outcome()
        first.join(timeout=30)
        # 60 s of audio cannot be made in 0.5 s: the stream is cut off, not passed off as complete.
        assert results == ["cut"]
        # The queued request either timed out waiting (504) or got some audio and was cut in turn.
        assert queued in ("504", "cut")
        wait_until_idle(url, within=1.0)


def test_worker_times_out_queued_jobs_and_frees_the_slot():
    """The queue itself, with a job that never ends: only the deadline stops it."""
    worker = SerialWorker(max_waiting=1)

    def endless():
        while True:
            time.sleep(0.01)
            yield b"x"

    async def scenario() -> tuple[int, float]:
        long_job = worker.submit(endless, timeout=0.6)
        waiting = worker.submit(endless, timeout=0.2)
        with pytest.raises(QueueFull):
            worker.submit(endless, timeout=1)
        received = 0
        with pytest.raises(JobTimeout):
            async for _ in worker.results(long_job):
                received += 1
        started = time.monotonic()
        with pytest.raises(JobTimeout):
            async for _ in worker.results(waiting):
                pass
        return received, time.monotonic() - started

    # In its own thread: Playwright's sync API (the page tests) keeps an event loop running in the main one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        received, waited = pool.submit(asyncio.run, scenario()).result()
    assert received > 10 and waited < 0.05  # the waiting job's deadline had already passed
    deadline = time.monotonic() + 2
    while worker.stats()["running"] or worker.stats()["waiting"]:
        assert time.monotonic() < deadline, worker.stats()
        time.sleep(0.01)
    worker.close()


# ---- voices ------------------------------------------------------------------------------------


def test_voice_upload_use_replace_delete(server):
    clip = speak_clip()
    created = upload(server, "narrator", clip, transcript="The quick brown fox jumps over the lazy dog.")
    assert created.status_code == 201, created.text
    assert created.json()["transcribed"] is False and 2 < created.json()["duration"] < 5
    names = [v["name"] for v in httpx.get(f"{server}/v1/voices").json()["voices"]]
    assert names[0] == "default" and "narrator" in names
    cloned = speech_pcm(server, voice="narrator")
    assert len(cloned) == ANSWER_SAMPLES

    again = upload(server, "narrator", clip, transcript="Other words.")
    assert again.status_code == 409 and "overwrite" in again.json()["error"]["message"]
    other_clip = speak_clip("A different sentence for the same name.")
    replaced = upload(server, "narrator", other_clip, transcript="x", overwrite=True)
    assert replaced.status_code == 201 and replaced.json()["transcript"] == "x"
    assert len(speech_pcm(server, voice="narrator")) == ANSWER_SAMPLES

    assert httpx.delete(f"{server}/v1/voices/narrator").status_code == 204
    assert httpx.delete(f"{server}/v1/voices/narrator").status_code == 404
    assert httpx.delete(f"{server}/v1/voices/default").status_code == 422
    with pytest.raises(openai.NotFoundError):
        speech_pcm(server, voice="narrator")


def test_bad_uploads_are_refused_and_leave_nothing_behind(server):
    clip = speak_clip()
    cases = {
        "oversized (by Content-Length)": (upload(server, "big", b"\0" * 2_000_000), 413),
        "oversized (file itself)": (upload(server, "big", clip[:44] + b"\0" * 520_000), 413),
        "empty": (upload(server, "empty", b""), 422),
        "text file": (upload(server, "text", b"hello, I am text", "notes.txt", "text/plain"), 415),
        "not audio inside": (upload(server, "fake", b"RIFF not really a wave file" * 10), 415),
        "too short": (upload(server, "short", encode_audio(np.full(4800, 0.1, np.float32), SAMPLE_RATE, "wav")), 422),
        "silent": (upload(server, "quiet", encode_audio(np.zeros(48000, np.float32), SAMPLE_RATE, "wav")), 422),
        "built-in name": (upload(server, "default", clip, transcript="x"), 409),
    }
    for bad_name in ("../evil", "a/b", "..", ".hidden", "Alice", "x" * 65, "", "con sole", "a\\b"):
        cases[f"name {bad_name!r}"] = (upload(server, bad_name, clip, transcript="x"), 422)
    for label, (response, status) in cases.items():
        assert response.status_code == status, (label, response.text)
        assert response.json()["error"]["message"], label
    chunked = httpx.post(  # no Content-Length: the body comes in chunks
        f"{server}/v1/voices", content=iter([b"--x\r\n"]), headers={"Content-Type": "multipart/form-data; boundary=x"}
    )
    assert chunked.status_code == 411
    assert [v["name"] for v in httpx.get(f"{server}/v1/voices").json()["voices"]] == ["default"]


def test_upload_without_transcript_is_transcribed(server):
    # Piper's natural voice: Whisper tiny.en mishears eSpeak's robotic one too often for a stable test.
    clip = encode_audio(synthesize_piper("The quick brown fox jumps over the lazy dog."), SAMPLE_RATE, "flac")
    response = upload(server, "auto", clip, filename="fox.flac", content_type="audio/flac")
    assert response.status_code == 201, response.text
    voice = response.json()
    assert voice["transcribed"] is True
    words = set(voice["transcript"].lower().replace(".", "").split())
    assert len(words & {"quick", "brown", "fox", "jumps", "lazy", "dog"}) >= 4, voice["transcript"]
    assert httpx.delete(f"{server}/v1/voices/auto").status_code == 204


def test_voice_store_never_keeps_half_a_voice(tmp_path, monkeypatch):
    store = VoiceStore(tmp_path)
    wav = synthesize_espeak("one two three")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("tokentts.serving.voices.write_json_atomic", crash)
    with pytest.raises(OSError):
        store.add("alice", wav, "one two three", transcribed=False)
    assert list(tmp_path.iterdir()) == [] and store.list() == []


@contextlib.contextmanager
def serve_process(command: list[str], env: dict[str, str], url: str) -> Iterator[None]:
    """A real `tokentts serve` process, up (its /health answers) for the duration of the block."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.stderr.read()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "tokentts serve did not come up"
            time.sleep(0.2)
        yield
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


def test_restart_keeps_voices_and_clears_interrupted_uploads(tiny_dir, tmp_path, browser_page):
    """Two real `tokentts serve` processes, one after the other, on the same data folder, with an API key."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TOKENTTS_API_KEY": "s3cret", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "tokentts.cli", "serve", "--model", str(tiny_dir), "--port", str(port),
               "--data-dir", str(tmp_path), "--max-seconds", str(MAX_SECONDS), "--device", "cpu"]
    auth = {"Authorization": "Bearer s3cret"}

    def serve():
        return serve_process(command, env, url)

    with serve():
        assert httpx.get(f"{url}/v1/voices").status_code == 401
        with pytest.raises(openai.AuthenticationError):
            speech_pcm(url)
        response = upload(url, "keeper", speak_clip("The quick brown fox."), transcript="The quick brown fox.", headers=auth)
        assert response.status_code == 201, response.text
    written = json.loads((tmp_path / "config.json").read_text())
    # The resolved config is written next to the voices, without the secret.
    assert written["api_key"] == "<set>" and written["max_seconds"] == MAX_SECONDS
    # What a crash in the middle of an upload can leave: a temp file and a clip no voice refers to.
    (tmp_path / "voices" / ".ghost.json.tmp1234").write_text("{")
    (tmp_path / "voices" / "ghost.0badc0de.flac").write_bytes(b"half")

    with serve():
        voices = httpx.get(f"{url}/v1/voices", headers=auth).json()["voices"]
        assert [v["name"] for v in voices] == ["default", "keeper"]
        assert voices[1]["transcript"] == "The quick brown fox."
        api = client(url, api_key="s3cret")
        cloned = api.audio.speech.create(model="tokentts", input=TEXT, voice="keeper", response_format="pcm")
        assert len(cloned.content) == 2 * ANSWER_SAMPLES
        # The page asks for the key, then lists the kept voice and speaks with it.
        page = browser_page
        page.goto(url)
        page.fill("#api-key", "s3cret")
        page.press("#api-key", "Tab")
        page.wait_for_selector("#voice option[value=keeper]", state="attached")
        page.select_option("#voice", "keeper")
        page.click("#speak")
        page.wait_for_function("() => document.querySelector('#player').duration > 0", timeout=30_000)
        assert page.errors == []
    assert sorted(p.name for p in (tmp_path / "voices").iterdir() if "ghost" in p.name) == []


def test_serve_without_arguments_speaks_with_the_embedded_base_model(tmp_path):
    """`tokentts serve` names no model: the packaged base model answers, on 127.0.0.1, in the voice it
    was trained to speak as speaker 0 (an eSpeak voice), closer to that voice than to another speaker
    of its corpus. Only the port is chosen, to stay clear of other servers; voices go to the default
    data folder, here under a temporary XDG_DATA_HOME."""
    from tokentts.audio.synth import synthesize_espeak
    from tokentts.data.synthetic import synthetic_speakers
    from tokentts.evaluation.metrics import SpeakerEncoder, cosine
    from tokentts.model.embedded import EMBEDDED_MODEL_DIR

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "XDG_DATA_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    text = "Please tell Anna that the map is still at the library."
    with serve_process([sys.executable, "-m", "tokentts.cli", "serve", "--port", str(port)], env, url):
        health = httpx.get(f"{url}/health").json()
        assert health["model"] == str(EMBEDDED_MODEL_DIR) and health["sample_rate"] == 24000
        served = [np.frombuffer(client(url).audio.speech.create(model="tokentts", input=text, voice="default",
                                                               response_format="pcm", extra_body={"seed": seed}).content,
                                dtype="<i2").astype(np.float32) / 32768 for seed in (1, 2)]
    assert all(1.0 < len(audio) / 24000 < 8.0 for audio in served)
    encoder = SpeakerEncoder()
    speaker_0, speaker_5 = (encoder.embed_speaker([synthesize_espeak(text, voice)], 24000)
                            for voice in np.array(synthetic_speakers(40, 0))[[0, 5]])
    for audio in served:
        embedding = encoder.embed(audio, 24000)
        assert cosine(embedding, speaker_0) > max(0.6, cosine(embedding, speaker_5))
    assert (tmp_path / "tokentts" / "serve" / "config.json").is_file()


def test_cli_reports_a_bad_model_or_a_busy_port_in_one_line(tiny_dir, tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing"), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["serve", "--model", str(tiny_dir), "--port", port, "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"127.0.0.1:{port}" in err[0]


# ---- schema fuzzing ----------------------------------------------------------------------------


def test_schemathesis_finds_no_server_error(server):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v1/audio/speech", "GET /v1/voices", "POST /v1/voices", "DELETE /v1/voices/{name}", "GET /health"}
    for operation in operations:

        @given(case=operation.as_strategy(), builtin_voice=st.booleans())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def no_server_error(case, builtin_voice):
            # Random voice names are all unknown; half the speech requests name the built-in
            # voice so that fuzzed text reaches the model too.
            if builtin_voice and isinstance(case.body, dict) and "voice" in case.body:
                case.body["voice"] = "default"
            case.call_and_validate(base_url=server, checks=[not_a_server_error], timeout=30)

        no_server_error()


# ---- the web page ------------------------------------------------------------------------------


def test_web_page_speaks_streamed_audio_and_uploads_a_voice(server, browser_page, tmp_path):
    page = browser_page
    page.goto(server)
    page.wait_for_selector("#voice option[value=default]", state="attached")
    page.fill("#text", "Hello from the browser.")
    page.click("#speak")
    duration = page.wait_for_function(
        "() => { const a = document.querySelector('#player'); return a.src && a.duration > 0 && a.duration; }", timeout=30_000
    ).json_value()
    assert abs(duration - MAX_SECONDS) < 0.05
    assert page.get_attribute("#download", "href").startswith("blob:")
    assert "first audio after" in page.text_content("#status")

    clip = tmp_path / "mine.wav"
    clip.write_bytes(speak_clip("My own voice, recorded at home."))
    page.fill("#voice-name", "mine")
    page.set_input_files("#voice-file", str(clip))
    page.fill("#voice-transcript", "My own voice, recorded at home.")
    page.click("#upload button[type=submit]")
    page.wait_for_function("() => document.querySelector('#voice').value === 'mine'", timeout=30_000)
    assert page.errors == []
    assert httpx.delete(f"{server}/v1/voices/mine").status_code == 204
