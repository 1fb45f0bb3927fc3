"""The small base model that ships inside the package, used when no model is named.

`tokentts build-base` (tokentts.training.base_model) trains it and `package_model` writes it
here: the CSM folder of `pretrain` with its weights (and its codec's) stored as float16, which
halves the wheel's size and loses nothing audible; `load_model` computes in float32 on CPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tokentts.config import building_directory
from tokentts.errors import TokenttsError

EMBEDDED_MODEL_DIR = Path(__file__).parent / "embedded"
MODEL_CARD = "README.md"
# What a packaged model folder keeps of a `pretrain` output: what loading needs, and the
# training settings and metrics for provenance (no checkpoints, no plots).
_PACKAGED_FILES = ("config.json", "generation_config.json", "processor_config.json", "tokenizer.json",
                   "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "finetune_config.json", "metrics.json")
WEIGHTS_FILE = "model.safetensors"


def embedded_model_path() -> Path | None:
    """The packaged base model's folder, or None when this build ships none."""
    return EMBEDDED_MODEL_DIR if (EMBEDDED_MODEL_DIR / "config.json").is_file() else None


def default_model() -> str:
    """The model to use when the user names none."""
    path = embedded_model_path()
    if path is None:
        raise TokenttsError("this build ships no embedded base model: pass --model (a CSM folder or a hub id such "
                            "as sesame/csm-1b), or train one with `tokentts build-base --install`")
    return str(path)


def _save_half(source: Path, target: Path) -> None:
    """Copy a safetensors file with its float32 tensors stored as float16."""
    tensors = load_file(str(source))
    save_file({name: t.half() if t.dtype == torch.float32 else t for name, t in tensors.items()}, str(target))


def package_model(model_dir: Path, target: Path, model_card: str) -> Path:
    """Write the model folder `model_dir` (a `pretrain` output) to `target` in float16, with
    `model_card` as its README.md; `target` appears complete or not at all."""
    from tokentts.model.loading import MODEL_CODEC_SUBDIR

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file() or not (model_dir / WEIGHTS_FILE).is_file():
        raise TokenttsError(f"{model_dir} is not a model folder (no config.json / {WEIGHTS_FILE})")
    with building_directory(Path(target)) as tmp:
        for name in _PACKAGED_FILES:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
        _save_half(model_dir / WEIGHTS_FILE, tmp / WEIGHTS_FILE)
        codec_dir = model_dir / MODEL_CODEC_SUBDIR
        if codec_dir.is_dir():
            (tmp / MODEL_CODEC_SUBDIR).mkdir()
            for item in codec_dir.iterdir():
                if item.suffix == ".safetensors":
                    _save_half(item, tmp / MODEL_CODEC_SUBDIR / item.name)
                elif item.is_file():
                    shutil.copy2(item, tmp / MODEL_CODEC_SUBDIR / item.name)
        (tmp / MODEL_CARD).write_text(model_card, encoding="utf-8")
    return Path(target)


def folder_megabytes(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6
