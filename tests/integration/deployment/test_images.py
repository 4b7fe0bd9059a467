"""The container images are built and run, not only linted.

`scripts/buildah-images.sh` builds the forwarder's Dockerfile and the example IOC's
examples/Dockerfile.ioc with buildah (chroot isolation, host network, no Docker engine), on
a stand-in for `python:3.11-slim` made with debootstrap.  This test then runs both images
the way `docker run` would (the image's ENTRYPOINT, the image's user and environment, our
arguments in place of CMD), on the host network with 127.0.0.1 addresses and ports chosen
for the test, against the suite's broker; configures the example IOC's PVs with
examples/configure.py as the README tells a user to, over PVA and over CA; and checks that
the IOC's values arrive decoded on the data topics.  It also runs the forwarder image's
HEALTHCHECK command against the running forwarder (healthy) and against a port where
nothing listens (unhealthy), and stops both containers with their images' STOPSIGNAL, as
`docker stop` would: each exits with status 0.

Opt-in locally, because it needs root, `apt-get install buildah debootstrap` and a minute or
two the first time:
`FORWARDER_TEST_IMAGES=1 python -m pytest tests/integration/deployment/test_images.py`.
CI (`.ci/run`) sets FORWARDER_TEST_IMAGES=1; then a missing tool is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.epics_servers import epics_env, free_port
from tests.support.kafka import Msg, TopicReader, decode, unique_topic

REPO = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO / "scripts" / "buildah-images.sh"
CONFIGURE = REPO / "examples" / "configure.py"
OPT_IN_ENV = "FORWARDER_TEST_IMAGES"
FORWARDER_IMAGE = os.environ.get("FORWARDER_IMAGE", "localhost/forwarder:buildah-test")
IOC_IMAGE = os.environ.get("FORWARDER_IOC_IMAGE", "localhost/forwarder-example-ioc:buildah-test")
#: First build: debootstrap (about a minute) and two pip builds; cached rebuilds take seconds.
BUILD_TIMEOUT_S = 1500
READY_LINE = "READY"  # example_ioc.READY_LINE
#: The example IOC's PVs and what the forwarder must make of them (see example_ioc.PV_SCHEMAS).
EXPECTED = {"DOUBLE": "f144", "LONG": "f144", "ENUM": "f144", "WAVEFORM": "f144",
            "CHOPPER_TIMESTAMPS": "tdct", "AMPLITUDE": "f144"}  # fmt: skip

pytestmark = pytest.mark.skipif(
    os.environ.get(OPT_IN_ENV) != "1",
    reason=f"image build-and-run test is opt-in: set {OPT_IN_ENV}=1 "
    "(needs root, buildah and debootstrap; CI sets it)",
)


def _require_tools() -> None:
    """Opted in: missing prerequisites are a failure (CI must not pass without the test)."""
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{OPT_IN_ENV}=1 but {', '.join(missing)} not installed "
                    "(apt-get install buildah debootstrap)")  # fmt: skip
    if os.geteuid() != 0:
        pytest.fail(f"{OPT_IN_ENV}=1 needs root (buildah with chroot isolation)")


def _storage_options() -> list[str]:
    done = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-storage"], capture_output=True, text=True, check=True
    )
    return done.stdout.split()


class Buildah:
    """buildah with the build script's private storage (where the images were built)."""

    def __init__(self) -> None:
        self.base = ["buildah", *_storage_options()]

    def __call__(self, *args: str, timeout: float = 60.0) -> str:
        done = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"buildah {' '.join(args)} failed: {done.stderr[-2000:]}")
        return done.stdout

    def image_config(self, image: str) -> dict[str, Any]:
        """The Docker-format config (Entrypoint, Cmd, Env, User, Healthcheck, ...)."""
        config: dict[str, Any] = json.loads(self("inspect", "--type", "image", image))["Docker"][
            "config"
        ]
        return config


class Container:
    """One container of an image, run like `docker run --network host IMAGE ARGS...`.

    `buildah run` does not apply the image's ENTRYPOINT, so the command is built from the
    image config: ENTRYPOINT, then `args` (which replace CMD, as with docker run).  The
    image's USER and ENV apply; `env` adds to ENV.  Output goes to a log file.
    """

    def __init__(self, buildah: Buildah, image: str, name: str) -> None:
        self.buildah = buildah
        self.config = buildah.image_config(image)
        self.name = f"{name}-{uuid.uuid4().hex[:8]}"
        buildah("from", "--pull=never", "--name", self.name, image)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)

    def command(self, args: Sequence[str] | None) -> list[str]:
        entrypoint = list(self.config.get("Entrypoint") or [])
        return entrypoint + list(self.config.get("Cmd") or [] if args is None else args)

    def exec(self, cmd: Sequence[str], env: Mapping[str, str], timeout: float = 30.0) -> int:
        """Run `cmd` in this container to completion; its exit code."""
        done = subprocess.run([*self._run_prefix(env), *cmd], capture_output=True, timeout=timeout)
        return done.returncode

    def _run_prefix(self, env: Mapping[str, str]) -> list[str]:
        env_args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
        return [*self.buildah.base, "run", "--isolation", "chroot", "--network", "host",
                *env_args, self.name, "--"]  # fmt: skip

    def start(self, env: Mapping[str, str], args: Sequence[str] | None = None) -> Container:
        self.proc = subprocess.Popen(
            [*self._run_prefix(env), *self.command(args)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends all of it
        )
        return self

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def wait_for_line(self, line: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while line not in self.log().splitlines():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {line!r} in {timeout} s:\n{self.log()}")
            time.sleep(0.2)

    def main_pid(self) -> int:
        """PID of the image's own process: the innermost child of `buildah run`.

        buildah is written in Go, whose threads all fork: a process's children are listed
        under each of its threads.
        """
        assert self.proc is not None
        pid = self.proc.pid
        while True:
            children = [
                int(child)
                for task in Path(f"/proc/{pid}/task").iterdir()
                for child in (task / "children").read_text().split()
            ]
            if not children:
                return pid
            assert len(children) == 1, f"{pid} has several children: {children}"
            pid = children[0]

    def stop(self, timeout: float = 20.0) -> int:
        """What `docker stop` does: the image's STOPSIGNAL to its process; the exit code."""
        assert self.proc is not None
        sig = signal.Signals[self.config.get("StopSignal") or "SIGTERM"]
        os.kill(self.main_pid(), sig)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        os.unlink(self._log.name)
        subprocess.run([*self.buildah.base, "rm", self.name], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def buildah() -> Buildah:
    """Both images built (the base image once per cache, layers cached between runs)."""
    _require_tools()
    start = time.monotonic()
    done = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "all"],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        cwd=str(REPO),
    )
    if done.returncode != 0:
        pytest.fail(f"image build failed ({done.returncode}):\n{done.stderr[-6000:]}")
    steps = [line for line in done.stderr.splitlines() if line.startswith("== ")]
    print(f"images built in {time.monotonic() - start:.0f} s:", *steps, sep="\n  ")
    return Buildah()


@pytest.fixture
def containers(buildah: Buildah) -> Iterator[list[Container]]:
    started: list[Container] = []
    yield started
    for container in reversed(started):
        container.close()


def wait_ready(bootstrap: str, status_topic: str, forwarder: Container, timeout: float) -> None:
    """Ready = it published a status message (x5f2) on its status topic."""
    with TopicReader(bootstrap, status_topic) as reader:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(m.schema_id == "x5f2" for m in reader.poll_messages(0.3)):
                return
            if forwarder.proc is not None and forwarder.proc.poll() is not None:
                raise AssertionError(f"forwarder container exited:\n{forwarder.log()}")
    raise AssertionError(f"forwarder container not ready in {timeout} s:\n{forwarder.log()}")


def configure(bootstrap: str, config_topic: str, prefix: str, protocol: str, topic: str) -> None:
    """examples/configure.py, run as the README tells a user to."""
    subprocess.run(
        [sys.executable, str(CONFIGURE), "--broker", bootstrap, "--topic", config_topic,
         "--prefix", prefix, "--protocol", protocol, "--output-topic", topic],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def by_source(messages: list[Msg]) -> dict[str, list[tuple[str, Any]]]:
    """Decoded data messages (f144, tdct) per source name."""
    found: dict[str, list[tuple[str, Any]]] = {}
    for msg in messages:
        if msg.schema_id in ("f144", "tdct"):
            schema, data = decode(msg)
            name = data.source_name if schema == "f144" else data.name
            found.setdefault(name, []).append((schema, data))
    return found


def every_pv_changed(prefix: str, messages: list[Msg]) -> bool:
    """Every PV arrived with its schema; the counting LONG PV with two different values."""
    found = by_source(messages)
    if any(
        {s for s, _ in found.get(prefix + pv, [])} != {schema} for pv, schema in EXPECTED.items()
    ):
        return False
    return len({int(d.value) for _, d in found[prefix + "LONG"]}) >= 2


@pytest.mark.timeout(BUILD_TIMEOUT_S + 300)  # the build runs in this test's fixture
def test_images_forward_the_example_iocs_values(
    kafka_bootstrap: str, buildah: Buildah, containers: list[Container]
) -> None:
    epics = epics_env(free_port(), free_port())
    prefix = f"IMG{os.getpid()}:"
    config_topic, status_topic = unique_topic("config"), unique_topic("status")
    data_topics = {"pva": unique_topic("data_pva"), "ca": unique_topic("data_ca")}
    http_port = free_port()

    ioc = Container(buildah, IOC_IMAGE, "example-ioc")
    containers.append(ioc)
    ioc.start(epics, ["--prefix", prefix, "--period", "0.2"])
    ioc.wait_for_line(READY_LINE, timeout=60)

    forwarder = Container(buildah, FORWARDER_IMAGE, "forwarder")
    containers.append(forwarder)
    assert forwarder.config["User"] == "10001:10001"
    forwarder.start(
        {**epics, "FORWARDER_HTTP_PORT": str(http_port)},
        ["--config-topic", f"{kafka_bootstrap}/{config_topic}",
         "--status-topic", f"{kafka_bootstrap}/{status_topic}",
         "--output-broker", kafka_bootstrap, "--status-interval", "500"],
    )  # fmt: skip
    wait_ready(kafka_bootstrap, status_topic, forwarder, timeout=60)

    for protocol, topic in data_topics.items():
        configure(kafka_bootstrap, config_topic, prefix, protocol, topic)
    for protocol, topic in data_topics.items():
        with TopicReader(kafka_bootstrap, topic) as reader:
            try:
                reader.wait_for(lambda ms: every_pv_changed(prefix, ms), timeout=60)
            except AssertionError as exc:
                raise AssertionError(
                    f"{protocol}: {exc}\nforwarder log:\n{forwarder.log()}"
                ) from None
            found = by_source(reader.messages)
        waveform = found[prefix + "WAVEFORM"][-1][1].value
        assert waveform.shape == (16,), protocol
        assert found[prefix + "CHOPPER_TIMESTAMPS"][-1][1].timestamps.size == 14, protocol
        assert {int(d.value) for _, d in found[prefix + "ENUM"]} <= {0, 1, 2, 3}, protocol
        assert found[prefix + "AMPLITUDE"][-1][1].value == pytest.approx(1.0), protocol

    # The image's HEALTHCHECK, in a second container of the same image (host network).
    test = forwarder.config["Healthcheck"]["Test"]
    assert test[0] == "CMD", test
    probe = Container(buildah, FORWARDER_IMAGE, "healthcheck")
    containers.append(probe)
    assert probe.exec(test[1:], {"FORWARDER_HTTP_PORT": str(http_port)}) == 0, forwarder.log()
    assert probe.exec(test[1:], {"FORWARDER_HTTP_PORT": str(free_port())}) != 0

    # `docker stop`: the image's STOPSIGNAL ends both cleanly (buildah run passes the code on).
    assert forwarder.stop() == 0, forwarder.log()
    assert ioc.stop() == 0, ioc.log()
