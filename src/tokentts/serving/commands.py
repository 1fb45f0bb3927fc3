"""`tokentts serve`: the speech server and its web page on one port."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import os
import socket

from tokentts.config import add_config_arguments, config_from_args, write_config
from tokentts.errors import TokenttsError
from tokentts.serving.config import ServeConfig

log = logging.getLogger(__name__)

API_KEY_ENV = "TOKENTTS_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, ServeConfig)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from tokentts.model import load_model
    from tokentts.model.embedded import default_model
    from tokentts.serving.app import create_app

    config = config_from_args(ServeConfig, args)
    if config.api_key is None and os.environ.get(API_KEY_ENV):
        config = dataclasses.replace(config, api_key=os.environ[API_KEY_ENV])
    if config.api_key is None and not _is_loopback(config.host):
        log.warning("listening on %s without --api-key: anyone on the network can use this server", config.host)
    config = dataclasses.replace(config, model=config.model or default_model())
    _check_port_free(config.host, config.port)  # before spending a minute loading the model
    loaded = load_model(config.model, config.adapter, config.device, config.dtype)
    app = create_app(config, loaded)
    # The key stays out of the file: the config is written for the record, not as a secret store.
    write_config(dataclasses.replace(config, api_key="<set>" if config.api_key else None), config.data_dir)
    print(f"tokentts serve: {loaded.source} on http://{config.host}:{config.port}/ (voices in {config.voices_dir})")
    uvicorn.run(app, host=config.host, port=config.port, log_level="info")
    return 0


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise TokenttsError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
