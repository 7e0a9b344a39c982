"""Fuzz: configuration files and ``MWC__`` overrides through ``load_config`` (issue 15).

About 2,000 seeded files derived from ``deploy/mwc.example.toml``: each loads (every number
finite, the derived settings buildable) or is refused with a ConfigError naming the key that
was made wrong; nothing else escapes (a traceback at start-up is a crash).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controller.config import ConfigError, load_config
from fuzz.gen_config import ConfigGenerator, run_config

CASES = int(os.environ.get("MWC_FUZZ_CASES", "2000"))
SEED = int(os.environ.get("MWC_FUZZ_SEED", "15"))


def test_config_files_survive_hostile_values() -> None:
    r = run_config(CASES, SEED)
    assert r["cases"] == CASES, r
    assert r["examples"] == [], r["examples"]
    assert (r["crashes"], r["wrongly_loaded"], r["unnamed_key"], r["non_finite_loaded"]) == (
        0, 0, 0, 0), r
    assert r["loaded"] > 0 and r["refused"] > 0, r  # both outcomes were exercised


def test_generator_is_seeded() -> None:
    base = {"station": {"max_kw": 1.0, "id": "x"}, "guns": [{"a": 1}]}
    a, b = ConfigGenerator(3, base), ConfigGenerator(3, base)
    assert [a.case().text for _ in range(50)] == [b.case().text for _ in range(50)]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
def test_non_finite_number_refused_naming_the_key(tmp_path: Path, value: str) -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "mwc.example.toml"
    text = example.read_text().replace("max_kw = 1440.0", f"max_kw = {value}", 1)
    assert f"max_kw = {value}" in text
    p = tmp_path / "mwc.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=r"station\.max_kw"):
        load_config(p, env={})


def test_file_that_is_not_utf8_refused(tmp_path: Path) -> None:
    p = tmp_path / "mwc.toml"
    p.write_bytes(b"[station]\nid = \"\xff\xfe\"\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(p, env={})
