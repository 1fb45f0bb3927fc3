"""Shared fixtures: a real headless Chromium (Debian's package) driven by Playwright."""

from __future__ import annotations

import os
import shutil

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Flags that keep Chromium off the (closed) network and working as root in a container.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module: on a shared, busy 2-core machine two threads make small
    models far slower (each op waits for the second thread)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A random tiny CSM in csm-1b's on-disk format (8 codebooks); one per test module, since
    `Generator` re-points the model's weights and some tests change the model."""
    from tokentts.model import save_tiny_csm

    return save_tiny_csm(tmp_path_factory.mktemp("tiny"), num_codebooks=8, seed=0)


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    from tokentts.model import load_model

    return load_model(tiny_dir)


@pytest.fixture(scope="session")
def chromium():
    """A Playwright Browser on the system Chromium; tests that need a page use `browser_page`."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("Chromium is not installed: `make test` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def browser_page(chromium):
    """A fresh page that records console errors and page errors in `page.errors`."""
    context = chromium.new_context()
    page = context.new_page()
    page.errors = []
    page.on("console", lambda msg: page.errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    yield page
    context.close()
