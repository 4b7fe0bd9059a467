"""Every class, function and module docs/explanation/architecture.md names exists in the code.

The architecture page is where a newcomer learns the code's vocabulary; it drifted once
(it named classes that had been renamed or removed), so the names it uses are checked:
CamelCase names must be defined (class, alias or protocol), names written as calls
(`decode_config_message(...)`) must be functions or methods, and paths must exist.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PAGE = REPO / "docs" / "explanation" / "architecture.md"
SOURCES = [*(REPO / "forwarder").rglob("*.py"), *(REPO / "tests" / "support").rglob("*.py")]

_SPAN = re.compile(r"`([^`]+)`")
_CAMEL = re.compile(r"^[A-Z][a-z0-9]+(?:[A-Z][A-Za-z0-9]*)+$|^[A-Z][a-z]{2,}[A-Za-z0-9]*$")
_CALL = re.compile(r"^\.?([A-Za-z_][A-Za-z0-9_]*)\(")


def _spans(text: str) -> list[str]:
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return [" ".join(s.split()) for s in _SPAN.findall(text)]


def _definitions() -> tuple[set[str], set[str]]:
    classes: set[str] = set()
    functions: set[str] = set()
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        classes |= set(re.findall(r"^\s*class\s+(\w+)", text, re.MULTILINE))
        classes |= set(re.findall(r"^(\w+)\s*(?::[^=\n]*)?=", text, re.MULTILINE))
        functions |= set(re.findall(r"^\s*def\s+(\w+)", text, re.MULTILINE))
        # Library names the code imports (e.g. streaming_data_types' ConnectionInfo).
        for names in re.findall(r"^\s*from\s+\S+\s+import\s+(\([^)]*\)|.*)$", text, re.MULTILINE):
            for name in names.strip("()").replace("\n", " ").split(","):
                if name.strip():
                    classes.add(name.split(" as ")[-1].split("#")[0].strip())
    return classes, functions


def _module_exists(name: str) -> bool:
    """A path from the repository root, or the tail of a path in the code (`core/x.py`)."""
    tail = name.rstrip("/")
    if (REPO / tail).exists():
        return True
    candidates = [*SOURCES, *(p.parent for p in SOURCES)]
    return any(p.as_posix().endswith("/" + tail) for p in candidates)


def problems(text: str) -> list[str]:
    classes, functions = _definitions()
    found = []
    for span in _spans(text):
        words = span.split(" / ") if " / " in span else [span]
        for word in words:
            word = word.strip()
            head = word.split("(", 1)[0].split(".", 1)[0] if "(" in word else word
            if word.endswith(".py") or word.endswith("/") or word.startswith("forwarder/"):
                if not _module_exists(word.split()[0]):
                    found.append(f"no module {word}")
            elif _CAMEL.match(head) and "(" not in word and " " not in word:
                if head not in classes:
                    found.append(f"no class {head}")
            elif (call := _CALL.match(word)) is not None:
                name = call.group(1)
                if name not in functions and name not in classes:
                    found.append(f"no function {name}")
    return found


def test_checker_finds_missing_names() -> None:
    text = (
        "`ForwardingCore` `NoSuchCore` `decode_config_message(buf)` `gone_function()` "
        "`forwarder/core/streams.py` `nosuch.py` `ADD`\n```\nIgnoredInCode\n```\n"
    )
    assert problems(text) == [
        "no class NoSuchCore",
        "no function gone_function",
        "no module nosuch.py",
    ]


def test_architecture_names_exist() -> None:
    assert problems(PAGE.read_text(encoding="utf-8")) == []


def test_every_module_is_described() -> None:
    """A newcomer finds every module of the package on the architecture page."""
    spans = set(_spans(PAGE.read_text(encoding="utf-8")))
    words = {w.strip("`") for span in spans for w in re.split(r"[\s,/()+:]+", span) if w}
    missing = [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "forwarder").rglob("*.py"))
        if path.stem not in ("__init__", "__main__")
        and path.name not in words
        and path.stem not in words
    ]
    assert missing == []
