"""Every package directory is declared in pyproject.toml, so a non-editable install works."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_declared() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    declared = set(config["tool"]["setuptools"]["packages"])
    found = set()
    for name, base in config["tool"]["setuptools"]["package-dir"].items():
        for init in (ROOT / base).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / base)
            if "migrations" in relative.parts:
                continue
            found.add(".".join((name, *relative.parts)) if relative.parts else name)
    assert found == declared
