"""What the speech server adds on top of generation, with the tiny random CSM of the tests.

    .venv/bin/python benchmarks/bench_serve.py [--model DIR] [--repeats 5] [--seconds 8]

(a) streaming encoders: CPU time to encode one second of audio, fed in 8-frame (640 ms) chunks;
(b) one request at a time: first audio and total time, calling `Generator.stream` directly vs
    through HTTP (the `openai` client, streaming pcm from a uvicorn server on 127.0.0.1);
(c) eight clients at once: every request is answered (queue of 8), one generation at a time;
    wall time, and each client's latency to first audio and to the end.

The machine may be shared: timings are the best and the median of `--repeats`, and the load
average is printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import openai
import uvicorn

from tokentts.generation import Generator, SamplingConfig
from tokentts.model import load_model, save_tiny_csm
from tokentts.serving import ServeConfig, create_app
from tokentts.serving.streaming import RESPONSE_FORMATS, StreamEncoder

TEXT = "The quick brown fox jumps over the lazy dog."


def best_and_median(values: list[float]) -> str:
    return f"{min(values) * 1000:7.1f} / {statistics.median(values) * 1000:7.1f} ms"


def bench_encoders(sample_rate: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    audio = (0.3 * rng.standard_normal(10 * sample_rate)).astype(np.float32)  # noise: the hardest case for codecs
    chunks = np.array_split(audio, len(audio) // int(0.64 * sample_rate))
    print("(a) encoding, CPU ms per second of audio (best / median):")
    for fmt in RESPONSE_FORMATS:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            encoder = StreamEncoder(fmt, sample_rate)
            for chunk in chunks:
                encoder.write(chunk)
            encoder.close()
            times.append((time.perf_counter() - start) / 10)
        print(f"    {fmt:5s} {best_and_median(times)}")


def start_server(loaded, data_dir: Path, **settings) -> tuple[uvicorn.Server, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = ServeConfig(model=loaded.source, data_dir=data_dir, port=port, **settings)
    server = uvicorn.Server(uvicorn.Config(create_app(config, loaded), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server, f"http://127.0.0.1:{port}"


def http_request(url: str, seed: int) -> tuple[float, float, int]:
    """(seconds to first audio, seconds to the end, bytes) of one streamed pcm request."""
    api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    start = time.perf_counter()
    first, size = None, 0
    with api.audio.speech.with_streaming_response.create(
        model="tokentts", input=TEXT, voice="default", response_format="pcm", extra_body={"seed": seed}
    ) as response:
        for data in response.iter_bytes():
            first = first if first is not None else time.perf_counter() - start
            size += len(data)
    return first or 0.0, time.perf_counter() - start, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="CSM folder (default: a fresh tiny random CSM)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0, help="audio per request (the random model never stops early)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_model(args.model or save_tiny_csm(Path(tmp) / "tiny"), device="cpu")
        print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, model {loaded.source}, {args.seconds:g} s per request")
        bench_encoders(loaded.codec.sample_rate, args.repeats)

        generator = Generator(loaded)
        sampling = SamplingConfig(max_seconds=args.seconds, seed=0)
        direct_first, direct_total = [], []

        def direct() -> None:
            for _ in range(args.repeats):
                start = time.perf_counter()
                stream = generator.stream(TEXT, "0", (), sampling)
                next(stream)
                direct_first.append(time.perf_counter() - start)
                for _chunk in stream:
                    pass
                direct_total.append(time.perf_counter() - start)

        # In a thread, like the server's worker: on an oversubscribed machine torch's intra-op threads
        # make the main thread many times slower than a second thread (see the report).
        worker = threading.Thread(target=direct)
        worker.start()
        worker.join()

        server, url = start_server(loaded, Path(tmp) / "serve", max_seconds=args.seconds, max_queue=8)
        http = [http_request(url, seed=0) for _ in range(args.repeats)]
        print(f"(b) one request at a time, first audio / whole answer (best / median of {args.repeats}):")
        print(f"    Generator.stream  first {best_and_median(direct_first)}   total {best_and_median(direct_total)}")
        print(f"    HTTP (openai)     first {best_and_median([h[0] for h in http])}   total {best_and_median([h[1] for h in http])}")
        print(f"    real-time factor over HTTP: {statistics.median(h[1] for h in http) / args.seconds:.3f}")

        results: list[tuple[float, float, int]] = [None] * 8  # type: ignore[list-item]
        barrier = threading.Barrier(8)

        def client(i: int) -> None:
            barrier.wait()
            results[i] = http_request(url, seed=i)

        start = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
        firsts = sorted(r[0] for r in results)
        ends = sorted(r[1] for r in results)
        print(f"(c) 8 clients at once: wall {wall:.2f} s for {8 * args.seconds:g} s of audio "
              f"(sequential estimate {8 * statistics.median(h[1] for h in http):.2f} s)")
        print(f"    first audio: fastest {firsts[0]:.2f} s, median {statistics.median(firsts):.2f} s, slowest {firsts[-1]:.2f} s")
        print(f"    whole answer: fastest {ends[0]:.2f} s, median {statistics.median(ends):.2f} s, slowest {ends[-1]:.2f} s")
        server.should_exit = True


if __name__ == "__main__":
    main()
