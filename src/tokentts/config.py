"""One dataclass per stage, filled from a file and/or CLI flags, written next to each run's output.

A stage declares its settings as a dataclass whose fields carry `help` in their metadata:

    @dataclass
    class PrepareConfig:
        max_seconds: float = field(default=30.0, metadata={"help": "longest snippet"})

`add_config_arguments` turns the fields into `--max-seconds` flags plus `--config FILE`
(JSON or TOML); `config_from_args` resolves file values, then explicit flags, over the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import types
import typing
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tokentts.errors import TokenttsError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

C = TypeVar("C")

CONFIG_FILENAME = "config.json"

# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(element type, is_list) of a field annotation, with Optional unwrapped."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin in (list, tuple):
        return typing.get_args(annotation)[0], True
    return annotation, False


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add a flag for every field of `config_cls` (except `skip`) and a --config FILE option."""
    hints = typing.get_type_hints(config_cls)
    parser.add_argument("--config", type=Path, help="JSON or TOML file with settings; flags override it")
    for f in dataclasses.fields(config_cls):
        if f.name in skip or not f.init:
            continue
        kind, is_list = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        # Defaults are left as None so that config_from_args can tell an explicit flag from a default.
        if kind is bool:
            parser.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif is_list:
            parser.add_argument(_flag(f.name), dest=f.name, type=kind, nargs="+", default=None, help=help_text)
        else:
            choices = f.metadata.get("choices")
            parser.add_argument(_flag(f.name), dest=f.name, type=kind, default=None, choices=choices, help=help_text)


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise TokenttsError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text) if str(path).endswith(".toml") else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise TokenttsError(f"config file {path} is not valid {'TOML' if str(path).endswith('.toml') else 'JSON'}: {exc}") from None
    # "stage" is the label write_config adds, so a run's own config.json can be fed back in.
    return {k.replace("-", "_"): v for k, v in data.items() if k != "stage"}


def build_config(config_cls: type[C], values: dict[str, Any]) -> C:
    """Instantiate `config_cls` from `values`, rejecting unknown keys with one clear line."""
    names = {f.name for f in dataclasses.fields(config_cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise TokenttsError(f"unknown setting(s) for {config_cls.__name__}: {', '.join(unknown)}")
    hints = typing.get_type_hints(config_cls)
    converted = {}
    for key, value in values.items():
        kind, is_list = _base_type(hints[key])
        if kind is Path and value is not None:
            value = [Path(v) for v in value] if is_list else Path(value)
        elif is_list and isinstance(value, tuple):
            value = list(value)
        converted[key] = value
    try:
        return config_cls(**converted)
    except (TypeError, ValueError) as exc:
        raise TokenttsError(f"invalid {config_cls.__name__}: {exc}") from None


def config_from_args(config_cls: type[C], args: argparse.Namespace, **overrides: Any) -> C:
    """Defaults, then the --config file, then explicit flags, then `overrides`."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(read_config_file(args.config))
    for f in dataclasses.fields(config_cls):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    return build_config(config_cls, values)


def config_to_dict(config: Any) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if dataclasses.is_dataclass(value):
            return config_to_dict(value)
        return value

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write through a temporary file in the same folder, then rename: readers never see a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        # mkstemp creates the file private (0600); give it the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def building_directory(target: Path) -> Iterator[Path]:
    """A hidden folder beside `target` to build into: on success it becomes `target` (replacing
    an earlier one whole), on failure it is removed, so `target` is never seen half-written."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    build_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    os.chmod(build_dir, 0o777 & ~_UMASK)  # mkdtemp makes it private; the result should not be
    try:
        yield build_dir
        # Some writers (safetensors, mkstemp) create private files; a finished output gets the
        # permissions any other file of the user would have.
        for path in build_dir.rglob("*"):
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_UMASK)
        if target.exists():
            # Rename the old one away first: there is no moment without a complete `target`
            # that a crash could leave behind.
            retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, retired)
            os.rename(build_dir, target)
            if retired.is_dir():
                shutil.rmtree(retired)
            else:
                retired.unlink()
        else:
            os.rename(build_dir, target)
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write JSON atomically (see write_bytes_atomic)."""
    return write_bytes_atomic(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode())


def write_config(config: Any, out_dir: Path, filename: str = CONFIG_FILENAME) -> Path:
    """Write the resolved config of a run next to its output."""
    path = Path(out_dir) / filename
    write_json_atomic(path, {"stage": type(config).__name__, **config_to_dict(config)})
    return path
