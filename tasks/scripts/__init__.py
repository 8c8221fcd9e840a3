"""The Lua scripts, shipped as package data (``*.lua`` beside this file) and loaded one way."""

from __future__ import annotations

import functools
from importlib import resources

from redis import Redis
from redis.commands.core import Script


@functools.cache
def source(name: str) -> str:
    """Return the text of ``<name>.lua``."""
    return resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


def register(client: Redis, name: str) -> Script:
    """Return ``<name>.lua`` registered on ``client``; redis-py reloads it after NOSCRIPT."""
    return client.register_script(source(name))
