"""Seeded hostile configuration files, from ``deploy/mwc.example.toml``, through
:func:`controller.config.load_config` (and its ``MWC__`` environment overrides).

Each file is either loaded — and then every number in it is finite and the derived settings
(hardware, links, reach matrix, vehicle endpoints) can be built — or refused with a
:class:`~controller.config.ConfigError` whose message names the key that was made wrong. Any
other exception is a crash of start-up (counted in ``crashes``).
"""

from __future__ import annotations

import gc
import json
import math
import random
import re
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "mwc.example.toml"

#: TOML values no numeric key may take (as TOML text).
NON_FINITE = ("nan", "+nan", "-nan", "inf", "+inf", "-inf", "1e400", "-1e400")
HOSTILE_TOML = (*NON_FINITE, "-1", "0", "-0.0", "9223372036854775807", "1e308", "5e-324",
                '""', '"x"', "true", "[]", "[1, 2]", "{}", '"\\u0000"', '"' + "x" * 5000 + '"',
                "1979-05-27T07:32:00Z", "-9223372036854775808")


_BARE = re.compile(r"[A-Za-z0-9_-]+")


class Toml:
    """A TOML value written verbatim by :func:`to_toml`."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _value(v: Any) -> str:
    if isinstance(v, Toml):
        return v.text
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else (
            repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(str(v))


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """TOML text of ``data`` (tables as sections, lists of tables as ``[[...]]``)."""
    plain, tables, arrays = [], [], []
    for k, v in data.items():
        key = k if _BARE.fullmatch(k) else json.dumps(k)
        if isinstance(v, dict) and v and not any(isinstance(x, Toml) for x in [v]):
            tables.append((key, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((key, v))
        else:
            plain.append(f"{key} = {_value(v)}")
    out = "\n".join(plain) + ("\n" if plain else "")
    for key, v in tables:
        name = f"{prefix}.{key}" if prefix else key
        out += f"\n[{name}]\n" + to_toml(v, name)
    for key, items in arrays:
        name = f"{prefix}.{key}" if prefix else key
        for item in items:
            out += f"\n[[{name}]]\n" + to_toml(item, name)
    return out


def _leaves(d: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _leaves(v, (*at, k)) if isinstance(v, dict | list) and v else [(*at, k)]
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _leaves(v, (*at, i)) if isinstance(v, dict | list) and v else [(*at, i)]
    return out


@dataclass(frozen=True, slots=True)
class ConfigCase:
    text: str
    env: dict[str, str]
    key: str | None  # a key the refusal must name (None: any refusal, or a load, is fine)
    must_refuse: bool
    what: str


class ConfigGenerator:
    def __init__(self, seed: int, base: dict[str, Any]) -> None:
        self.rng = random.Random(seed)
        self.base = base

    def case(self) -> ConfigCase:
        rng = self.rng
        data = json.loads(json.dumps(self.base))
        leaves = _leaves(data)
        numeric = [p for p in leaves if isinstance(_get(self.base, p), int | float)
                   and not isinstance(_get(self.base, p), bool)]
        kind = rng.choices(("non_finite", "leaf", "delete", "unknown", "env", "text"),
                           (30, 30, 10, 10, 10, 10))[0]
        if kind == "non_finite":
            path = rng.choice(numeric)
            _set(data, path, Toml(rng.choice(NON_FINITE)))
            return ConfigCase(to_toml(data), {}, str(path[-1]), True,
                              f"{_dotted(path)} = non-finite")
        if kind == "leaf":
            path = rng.choice(leaves)
            value = rng.choice(HOSTILE_TOML)
            _set(data, path, Toml(value))
            return ConfigCase(to_toml(data), {}, None, False, f"{_dotted(path)} = {value[:20]}")
        if kind == "delete":
            path = rng.choice(leaves)
            parent = _get(data, path[:-1])
            del parent[path[-1]]
            return ConfigCase(to_toml(data), {}, None, False, f"deleted {_dotted(path)}")
        if kind == "unknown":
            section = rng.choice([k for k, v in data.items() if isinstance(v, dict)])
            name = rng.choice(("max_kW", "passwrd", "x" * 40, "é"))
            data[section][name] = 1
            return ConfigCase(to_toml(data), {}, name, True, f"unknown {section}.{name}")
        if kind == "env":
            path = rng.choice(numeric)
            var = "MWC__" + "__".join(str(p).upper() for p in path)
            value = rng.choice(("nan", "inf", "-inf", "1e400", "NaN", "Infinity", "-1", "x",
                                "[1]", "{}", "9" * 30))
            refuse = value in ("nan", "inf", "-inf", "1e400")
            return ConfigCase(to_toml(data), {var: value}, str(path[-1]) if refuse else None,
                              refuse, f"{var}={value}")
        text = to_toml(data)
        cut = rng.randrange(len(text))
        choice = rng.randrange(4)
        if choice == 0:
            text = text[:cut]
        elif choice == 1:
            text = text[:cut] + rng.choice(("\x00", "[[", "= =", '"', "\ud800", "]]]",
                                            "\n[station]\n"))
            text += text[cut:]
        elif choice == 2:
            text = text + "\n" + text  # every key twice
        else:
            text = "[a]\n" * 2 + text
        return ConfigCase(text, {}, None, False, f"text corrupted ({choice})")


def _get(d: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        d = d[p]
    return d


def _set(d: Any, path: tuple[Any, ...], value: Any) -> None:
    _get(d, path[:-1])[path[-1]] = value


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def _numbers(obj: Any) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list | tuple):
        return [x for v in obj for x in _numbers(v)]
    return [obj] if isinstance(obj, float) else []


def run_config(cases: int, seed: int) -> dict[str, Any]:
    """``cases`` configuration files through ``load_config``; see the module docstring."""
    from controller.config import ConfigError, load_config
    from fuzz.station_boundaries import rss_mb

    base = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    gen = ConfigGenerator(seed, base)
    out: dict[str, Any] = {"cases": 0, "crashes": 0, "internal_errors": 0, "unanswered": 0,
                           "closed": 0, "rss_growth_mb": 0.0, "loaded": 0, "refused": 0,
                           "wrongly_loaded": 0, "unnamed_key": 0, "non_finite_loaded": 0,
                           "examples": []}
    gc.collect()
    rss0 = rss_mb()
    with tempfile.TemporaryDirectory(prefix="mwc-fuzz-cfg-") as tmp:
        path = Path(tmp) / "mwc.toml"
        for _ in range(cases):
            case = gen.case()
            out["cases"] += 1
            try:
                path.write_text(case.text, encoding="utf-8", errors="surrogatepass")
            except UnicodeEncodeError:
                path.write_bytes(case.text.encode("utf-8", "replace"))
            try:
                cfg = load_config(path, env=case.env)
                cfg.hardware_config()
                cfg.link_settings()
                cfg.reach_matrix()
                for g in range(len(cfg.guns)):
                    cfg.vehicle_endpoint(g)
            except ConfigError as exc:
                out["refused"] += 1
                if case.key is not None and case.key not in str(exc):
                    out["unnamed_key"] += 1
                    _example(out, f"{case.what}: message does not name {case.key!r}: "
                                  f"{str(exc)[:160]}")
                continue
            except Exception as exc:  # start-up would crash with a traceback
                out["crashes"] += 1
                _example(out, f"{case.what}: {exc!r}"[:200])
                continue
            out["loaded"] += 1
            if case.must_refuse:
                out["wrongly_loaded"] += 1
                _example(out, f"loaded: {case.what}")
            if not all(math.isfinite(x) for x in _numbers(cfg.model_dump())):
                out["non_finite_loaded"] += 1
                _example(out, f"non-finite number loaded: {case.what}")
    gc.collect()
    out["rss_growth_mb"] = round(rss_mb() - rss0, 1)
    return out


def _example(out: dict[str, Any], text: str) -> None:
    if len(out["examples"]) < 30:
        out["examples"].append(text)
