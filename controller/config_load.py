"""From the parsed file to data the model validates, and from its errors to the operator's
message: the ``MWC__`` environment overlay and the wording of a :class:`ConfigError`.

Kept apart from the model so the rules for *reading* a configuration (what an override may
address, which values are never echoed) are found in one place.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from controller.config_base import ConfigError

ENV_PREFIX = "MWC__"


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Overlay ``MWC__A__B=value`` variables onto the parsed TOML (a new dict)."""
    out: dict[str, Any] = _deep_copy(data)
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not path:
            continue
        node: Any = out
        for i, key in enumerate(path[:-1]):
            node = _child(node, key, name, path[i + 1])
        _assign(node, path[-1], _env_value(raw), name)
    return out


def _deep_copy(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _deep_copy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deep_copy(v) for v in x]
    return x


def _child(node: Any, key: str, var: str, next_key: str) -> Any:
    if isinstance(node, list):
        if not key.isdigit() or int(key) >= len(node):
            raise ConfigError(f"{var}: list index {key!r} does not exist in the file")
        return node[int(key)]
    if not isinstance(node, dict):
        raise ConfigError(f"{var}: {key!r} is not a section")
    if key not in node:
        node[key] = [] if next_key.isdigit() else {}
    return node[key]


def _assign(node: Any, key: str, value: Any, var: str) -> None:
    if isinstance(node, list):
        if not key.isdigit() or int(key) >= len(node):
            raise ConfigError(f"{var}: list index {key!r} does not exist in the file")
        node[int(key)] = value
    elif isinstance(node, dict):
        node[key] = value
    else:
        raise ConfigError(f"{var}: cannot set {key!r} inside a plain value")


def _loc(parts: tuple[int | str, ...]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


_SECRET_WORDS = ("password", "passphrase", "secret", "token")


def _shown(err: Any) -> str:
    """The offending value for the message; never the value of a secret key."""
    if any(w in str(part).lower() for part in err["loc"] for w in _SECRET_WORDS):
        return "(secret, not shown)"
    return repr(err.get("input"))


def format_errors(exc: ValidationError) -> str:
    """The operator's message: location, value and what is expected; secrets are never
    echoed, nor the values of unknown keys (a misspelled password key would be one)."""
    lines = []
    for err in exc.errors():
        loc = _loc(tuple(err["loc"]))
        if err["type"] == "missing":
            lines.append(f"{loc}: missing; expected a value for {err['loc'][-1]!r} "
                         "(see deploy/mwc.example.toml)")
        elif err["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key; check the spelling "
                         "against deploy/mwc.example.toml")
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            msg = msg.removeprefix("Input should be ")
            if msg.startswith(("greater", "less")):
                msg = f"a value {msg}"
            if isinstance(err.get("input"), dict):  # a whole section: the message names the key
                lines.append(f"{loc}: {msg}")
            else:
                lines.append(f"{loc} = {_shown(err)}: expected {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
