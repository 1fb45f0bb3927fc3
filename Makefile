# Two entry points: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install browser flite clean base-model

install: $(STAMP)

# torch first and pinned: the CPU build lies on this machine's disk; an unpinned
# torch would pull a multi-GB CUDA build instead.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[demo,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tokentts demo

# The embedded base model's recipe (about 4.5 h on an idle 2-core CPU): corpora (eSpeak + Flite voices),
# codec (one thread), pretraining, continuation, the voices phase (shifted Flite speakers), the average of
# those two phases, evaluation, then float16 weights + model card into src/tokentts/model/embedded.
# Two threads: a pretraining step took 2.6 s with 2, 4.5 s with 1 (BENCHMARKS.md).
base-model: $(STAMP) flite
	OMP_NUM_THREADS=2 $(VENV)/bin/tokentts build-base --install

# The page tests drive a real headless Chromium: Debian's package (Playwright's own download is offline-blocked).
browser:
	command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; }

# Flite's voices (CMU recordings of real speakers) for synthetic corpora (synth-corpus / build-base
# --flite-voices): Debian's package.
flite:
	command -v flite >/dev/null || { apt-get update -q && apt-get install -y -q flite; }

test: $(STAMP) browser flite
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo-output
