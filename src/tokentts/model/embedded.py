"""The small base model that ships inside the package, used when no model is named.

Its recipe and weights are the subject of the embedded-model work; until the weights are
trained and packaged, `embedded_model_path()` returns None and commands that need a model
ask for `--model`.
"""

from __future__ import annotations

from pathlib import Path

from tokentts.errors import TokenttsError

EMBEDDED_MODEL_DIR = Path(__file__).parent / "embedded"


def embedded_model_path() -> Path | None:
    """The packaged base model's folder, or None when this build ships none."""
    return EMBEDDED_MODEL_DIR if (EMBEDDED_MODEL_DIR / "config.json").is_file() else None


def default_model() -> str:
    """The model to use when the user names none."""
    path = embedded_model_path()
    if path is None:
        raise TokenttsError("this build ships no embedded base model yet: pass --model (a CSM folder or a hub id such as sesame/csm-1b)")
    return str(path)
