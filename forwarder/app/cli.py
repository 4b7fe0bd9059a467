"""The `forwarder-launch` command line, built from `Settings`, validated into one object.

Every option can come from the command line, from the environment or from a
``key = value`` config file (`-c`); precedence is command line > environment > file >
default.  Each option's environment variable is ``FORWARDER_<OPTION_NAME>``; options the
ESS forwarder reads from the environment also accept its name (``CONFIG_TOPIC``,
``OUTPUT_BROKER``, ``VERBOSITY`` ...), so its deployments work unchanged.  When both
names are set, ``FORWARDER_<NAME>`` wins: it is the deliberate, namespaced one, while a
generic name such as ``LOG_FILE`` or ``VERBOSITY`` may have been set for something else.
The choice is logged at start (`Settings.environment_notes`).  An ESS name set to the
empty string counts as unset.

All validation happens here so the service starts either with a complete, consistent
configuration or not at all: a bad value exits with status 2 and one line naming the
option, never a traceback, and never a password.

`--config-topic`, `--status-topic` and `--output-broker` are required, as in the ESS
forwarder: an operator who forgot the status topic learns it at start, not when nobody can
see what the forwarder does.

Choices that differ from the reference forwarder, on purpose:

* `--verbosity` defaults to Info so that a fresh deployment tells what it is doing.
* `--service-id` defaults to ``forwarder-<hostname>``: stable across restarts so status
  consumers see the same instance come back.  Set it when running several per host.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NoReturn

import configargparse

from forwarder.adapters.kafka_uri import KafkaUri
from forwarder.app.settings import (
    CONFIG_FILE_ESS_ENV,
    CONFIG_FILE_OPTION,
    ENDPOINTS,
    Settings,
    default_of,
    env_var,
    long_option,
    option_fields,
)


def forwarder_version() -> str:
    from forwarder import __version__

    return __version__


# configargparse ships no type information (no py.typed, no stubs package), so its
# ArgumentParser is Any to mypy and subclassing it needs this one ignore.
class _Parser(configargparse.ArgumentParser):  # type: ignore[misc]
    """Errors are one line naming the option (no usage dump, no echoed secrets)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {_clean_error(message)}\n")
        raise SystemExit(2)


def _clean_error(message: str) -> str:
    if message.startswith("argument "):
        message = message[len("argument ") :]
    prefix = "unrecognized arguments: "
    if message.startswith(prefix):
        # Unknown tokens may be misspelled password options followed by the password.
        tokens = message[len(prefix) :].split()
        options = [t.split("=", 1)[0] for t in tokens if t.startswith("-")]
        hidden = len(tokens) - len(options)
        shown = " ".join(options)
        if hidden:
            shown = f"{shown} (and {hidden} value(s) not shown)".strip()
        message = prefix + shown
    return message.splitlines()[0] if message else "invalid arguments"


def checked(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """Turn ValueError into argparse's error so the message survives unchanged."""

    def wrapper(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as exc:
            raise configargparse.ArgumentTypeError(str(exc)) from None

    wrapper.__name__ = getattr(convert, "__name__", "value")
    return wrapper


def _env_names(name: str) -> str:
    ess = _ess_env(name)
    return env_var(name) + (f" or {ess}" if ess else "")


def _ess_env(name: str) -> str | None:
    for f in option_fields():
        if f.name == name:
            ess: str | None = f.metadata["option"].ess_env
            return ess
    return None


def build_parser() -> configargparse.ArgumentParser:
    """The parser, one argument per `Settings` field; `--help` lists every env variable."""
    p = _Parser(
        description="Forward EPICS PVs to Kafka as ESS FlatBuffers messages.",
        allow_abbrev=False,
        add_config_file_help=True,
    )
    p.add_argument(
        "-c",
        f"--{long_option(CONFIG_FILE_OPTION)}",
        is_config_file=True,
        env_var=env_var(CONFIG_FILE_OPTION),
        help="file of `option-name = value` lines (# comments) giving defaults "
        f"[env {env_var(CONFIG_FILE_OPTION)} or {CONFIG_FILE_ESS_ENV}]",
    )
    p.add_argument("--version", action="version", version=f"forwarder {forwarder_version()}")
    for f in option_fields():
        spec = f.metadata["option"]
        flags = ([spec.short] if spec.short else []) + [f"--{long_option(f.name)}"]
        kwargs: dict[str, Any] = {"dest": f.name, "env_var": env_var(f.name)}
        default = default_of(f.name)
        shown = ""
        if default not in (None, False) and f.name not in ("service_id", "kafka_config"):
            shown = f" (default: {default})"
        kwargs["help"] = f"{spec.help}{shown} [env {_env_names(f.name)}]"
        if spec.kind == "flag":
            kwargs.update(action="store_true", default=False)
        elif spec.kind == "append":
            kwargs.update(action="append", type=checked(spec.convert), default=[])
        else:
            kwargs.update(type=checked(spec.convert), default=default, required=spec.required)
        if spec.metavar:
            kwargs["metavar"] = spec.metavar
        p.add_argument(*flags, **kwargs)
    return p


def resolve_environment(environ: Mapping[str, str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """The environment as the parser sees it: ESS names copied to ``FORWARDER_*`` unless
    that is set (it wins), and one note per ESS name read or overridden (logged at start)."""
    env = dict(environ)
    notes: list[str] = []
    names = [(CONFIG_FILE_OPTION, CONFIG_FILE_ESS_ENV)]
    names += [(f.name, f.metadata["option"].ess_env) for f in option_fields()]
    for name, ess in names:
        if not ess or not environ.get(ess, "").strip():
            continue
        ours = env_var(name)
        if ours in environ:
            notes.append(f"{ours} and {ess} are both set; using {ours} for --{long_option(name)}")
        else:
            env[ours] = environ[ess]
            notes.append(f"--{long_option(name)} from {ess} (the ESS forwarder's name)")
    return env, tuple(notes)


def _check_endpoints(parser: configargparse.ArgumentParser, settings: Settings) -> None:
    """Cross-option rules a single `type=` cannot see (passwords, protocol/SASL clashes)."""
    for uri_name, password_name in ENDPOINTS:
        uri: KafkaUri | None = getattr(settings, uri_name)
        password = getattr(settings, password_name)
        uri_option = f"--{long_option(uri_name)}"
        password_option = f"--{long_option(password_name)}"
        if uri is None:
            if password:
                parser.error(f"{password_option} is set but {uri_option} is not")
            continue
        if uri.sasl_mechanism is not None and not password:
            parser.error(
                f"{password_option} is required because {uri_option} has SASL user {uri.username!r}"
            )
        if password and uri.sasl_mechanism is None:
            parser.error(
                f"{password_option} is set but {uri_option} has no SASL user "
                "(expected MECHANISM\\user@host:port)"
            )
        endpoint = settings.endpoint(uri_name)
        assert endpoint is not None
        try:
            endpoint.librdkafka_config()
        except ValueError as exc:
            parser.error(f"{uri_option}: {exc}")


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Parse and validate; exits with status 2 and one clear line on any problem."""
    parser = build_parser()
    env, notes = resolve_environment(os.environ if environ is None else environ)
    ns = parser.parse_args(None if argv is None else list(argv), env_vars=env)
    values = {f.name: getattr(ns, f.name) for f in option_fields()}
    values["kafka_config"] = MappingProxyType(dict(values["kafka_config"]))
    settings = Settings(**values, environment_notes=notes)
    _check_endpoints(parser, settings)
    return settings
