"""pyproject.toml holds forwarder/ to everything `mypy --strict` checks.

mypy has no per-module `strict`, so the override for `forwarder.*` lists --strict's flags
one by one; that is what lets the single `mypy forwarder benchmarks tests` (CI, pre-commit,
CONTRIBUTING) be strict on the package and lenient on tests. A mypy release that adds a
flag to --strict would silently leave the package less strict than `mypy --strict
forwarder`: these tests compare the options mypy itself derives from both, per module.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy.main import process_options
from mypy.options import Options

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _options(*args: str) -> Options:
    # `-c pass` is a source to check; nothing is checked, only the options are built.
    _, options = process_options([*args, "-c", "pass"])
    return options


def _settings(options: Options) -> dict[str, object]:
    return {
        name: getattr(options, name)
        for name in dir(options)
        if not name.startswith("_") and not callable(getattr(options, name))
    }


def strict_gaps(config: Path, module: str) -> dict[str, object]:
    """Each option --strict sets that `config` leaves weaker for `module`: name -> strict value."""
    default = _settings(_options("--config-file="))
    strict = _settings(_options("--config-file=", "--strict"))
    ours = _options(f"--config-file={config}")
    per_module = _settings(ours.clone_for_module(module))
    return {
        name: value
        for name, value in strict.items()
        if value != default[name] and per_module[name] != value
    }


@pytest.mark.parametrize(
    "module", ["forwarder", "forwarder.core.forwarding", "forwarder.app.config_cli.status"]
)
def test_forwarder_modules_get_every_strict_option(module: str) -> None:
    assert strict_gaps(PYPROJECT, module) == {}


def test_a_missing_strict_flag_is_found(tmp_path: Path) -> None:
    text = PYPROJECT.read_text(encoding="utf-8")
    line = "disallow_untyped_defs = true\n"
    assert text.count(line) == 1
    broken = tmp_path / "pyproject.toml"
    broken.write_text(text.replace(line, ""), encoding="utf-8")
    assert strict_gaps(broken, "forwarder.core.forwarding") == {"disallow_untyped_defs": True}


def test_tests_are_not_held_to_strict() -> None:
    """The override names the package only: test code keeps mypy's defaults."""
    assert "disallow_untyped_defs" in strict_gaps(PYPROJECT, "tests.unit.core.test_forwarding")
