"""The compat modules: version guards, the stock fallback, and the fence around caproto's
and p4p's private names (only `_caproto_compat` and `_p4p_compat` may import them; ruff's
SLF rule fences private attributes the same way)."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

from forwarder.adapters import _caproto_compat, _p4p_compat, _versions
from forwarder.adapters._versions import STOCK_ENV, stock_forced, version_problem

ROOT = Path(__file__).resolve().parents[3] / "forwarder"
COMPAT = {"_caproto_compat.py", "_p4p_compat.py"}


def _forget(module: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the module's guard decide again now, and again after the test."""
    guard = module.fast_paths  # type: ignore[attr-defined]
    guard.reset()
    monkeypatch.setattr(guard, "_fast", None)


def _private_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] in ("caproto", "p4p") and any(p.startswith("_") for p in parts[1:]):
                found.append(f"{path.name}:{getattr(node, 'lineno', 0)}: {name}")
    return found


def test_only_the_compat_modules_import_private_caproto_or_p4p_names() -> None:
    offenders = [
        hit
        for path in sorted(ROOT.rglob("*.py"))
        if path.name not in COMPAT
        for hit in _private_imports(path)
    ]
    assert offenders == []
    # The check itself sees what it must see.
    assert _private_imports(ROOT / "adapters" / "_caproto_compat.py")
    assert _private_imports(ROOT / "adapters" / "_p4p_compat.py")


@pytest.mark.parametrize(
    ("installed", "ok"),
    [("1.3.0", True), ("1.3.7.post1", True), ("1.4.0", False), ("1.2.9", False),
     ("2.0", False), ("garbage", False), ("1", False)],
)  # fmt: skip
def test_version_guard(installed: str, ok: bool) -> None:
    problem = version_problem("caproto", installed, ((1, 3), (1, 4)))
    assert (problem is None) is ok
    if problem is not None:
        assert installed in problem and "1.3" in problem and "1.4" in problem


@pytest.mark.parametrize("module", [_caproto_compat, _p4p_compat])
def test_untested_release_falls_back_to_the_stock_path_with_one_warning(
    module: object, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(STOCK_ENV, raising=False)
    _forget(module, monkeypatch)
    monkeypatch.setattr(_versions.metadata, "version", lambda _name: "99.0.0")  # type: ignore[attr-defined]
    with caplog.at_level(logging.WARNING):
        assert module.fast_paths() is False  # type: ignore[attr-defined]
        assert module.fast_paths() is False  # type: ignore[attr-defined]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "99.0.0" in warnings[0].getMessage()


@pytest.mark.parametrize("module", [_caproto_compat, _p4p_compat])
def test_tested_release_uses_the_fast_paths_unless_stock_is_forced(
    module: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(STOCK_ENV, raising=False)
    _forget(module, monkeypatch)
    assert module.fast_paths() is True  # type: ignore[attr-defined]
    _forget(module, monkeypatch)
    monkeypatch.setenv(STOCK_ENV, "1")
    assert stock_forced()
    assert module.fast_paths() is False  # type: ignore[attr-defined]
