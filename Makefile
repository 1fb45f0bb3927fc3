# Two entry points: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install browser clean

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

# The page tests drive a real headless Chromium: Debian's package (Playwright's own download is offline-blocked).
browser:
	command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; }

test: $(STAMP) browser
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo-output
