"""Starting or joining Ray for the ``ray`` executor, with nothing leaving the machine, and a local
Ray that dies with its driver.

A local Ray (no address given) is a one-machine cluster, so it is kept on loopback and offline:

- ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, set before Ray is imported, makes Ray take 127.0.0.1 as
  the node address; otherwise it asks the kernel for its route to 8.8.8.8 and serves every process
  on the machine's public address.
- Ray's API server (started even with ``include_dashboard=False``, to record usage statistics)
  asks three cloud metadata services which cloud it runs on (two connects to 169.254.169.254, a DNS
  lookup of metadata.google.internal) before it reads ``RAY_USAGE_STATS_ENABLED``. These are plain
  ``requests`` calls, so while the local cluster starts, HTTP(S) goes through a closed loopback port
  (``http_proxy``) and only loopback is exempt (``no_proxy``, which Ray's own gRPC honours too); the
  tasks get the user's proxy settings back through their runtime environment.
- Usage statistics are off (``RAY_USAGE_STATS_ENABLED=0``).
- A reaper process (``python -m benchmark.ray_cluster PID``) records the driver's new descendants
  every half second (and at once when asked, right after ``ray.init``) and, when the driver is gone
  (its pipe closes: ``kill -9`` included), SIGKILLs those still alive. Ray's dashboard and
  runtime-env agents otherwise outlive a killed driver by a minute or more, retrying to report the
  raylet's death to a GCS that died with it.

A cluster given by address (``ray start``) is the operator's: start it with ``--disable-usage-stats``
(README "Network").
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmark.core.environ import environ

PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY")
NO_PROXY_VARS = ("no_proxy", "NO_PROXY", "no_grpc_proxy")
LOOPBACK = "127.0.0.1,localhost,::1"
REAP_POLL_S = 0.5
CONNECT_TIMEOUT_S = 15.0  # a cluster's head answers in milliseconds; a dropped SYN is retried for 2 min


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): connecting to it is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def offline_start() -> Iterator[dict[str, str]]:
    """While Ray's processes are started: HTTP(S) only to a dead loopback proxy, loopback exempt.
    Yields the user's own settings (empty when unset) for the tasks' runtime environment."""
    dead = f"http://127.0.0.1:{_closed_port()}"
    values = {**dict.fromkeys(PROXY_VARS, dead), **dict.fromkeys(NO_PROXY_VARS, LOOPBACK)}
    with environ(values) as saved:
        yield {name: value or "" for name, value in saved.items()}


@contextlib.contextmanager
def our_signal_handlers() -> Iterator[None]:
    """``ray.init`` replaces the driver's SIGTERM handler with its own ``sys.exit(15)`` and, in C++,
    a failure-signal handler that aborts (exit 134): the CLI's handlers are put back after it, so an
    interrupt stops the grid as it does without Ray (143 / 130 / 138, runs in flight named). Outside
    the main thread nothing is put back (Ray sets none there either)."""
    from benchmark.core import stop

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    try:
        yield
    finally:
        stop.install(saved)


def connect(address: str | None, env: dict[str, str]) -> tuple[Any, bool]:
    """Ray, initialised: joined at ``address``, already initialised in this process (a test, a
    notebook), or a new local instance (see the module docstring). ``env``: variables the tasks
    need (forwarded to them). Returns (ray, whether we started it and must shut it down)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # before the import: Ray must not reach the network
    if address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback node address
    import ray

    if ray.is_initialized():
        return ray, False
    if address is not None:
        check_reachable(address)
        runtime_env = {"env_vars": env} if env else None
        with our_signal_handlers():
            ray.init(address=address, log_to_driver=False, logging_level="ERROR", runtime_env=runtime_env)
        return ray, True
    import torch

    with offline_start() as user_proxy, our_signal_handlers():
        runtime_env = {"env_vars": {**env, **user_proxy}}
        # The GPUs torch sees: Ray counts them through NVML alone, and finds none where NVML does not
        # load (some containers) although CUDA works, and a GPU grid would then be refused.
        gpus = torch.cuda.device_count()
        ray.init(
            log_to_driver=False,
            logging_level="ERROR",
            include_dashboard=False,
            runtime_env=runtime_env,
            num_gpus=gpus,
        )
    return ray, True


def endpoint(address: str) -> tuple[str, int] | None:
    """The (host, port) a cluster address names, or None where Ray finds the cluster itself
    (``auto``, ``local``) or the form is not host:port."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or (":" in host and not host.startswith("[")):
        return None  # no port, or a bare IPv6 address (its port would need brackets)
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse, in one line, a cluster address where nothing answers (``timeout_s`` per address its
    host resolves to) or whose host does not resolve: ``ray.init`` would retry it for minutes on
    end (over 3 measured, printing a warning every few seconds)."""
    from benchmark.ray_resources import RayExecutorError  # here: the reaper imports this module bare

    where = endpoint(address)
    if where is None:
        return
    try:
        _connect(where, timeout_s)
    except socket.gaierror as exc:
        raise RayExecutorError(
            f"Ray cluster at {address}: cannot resolve {where[0]} ({exc.strerror})"
        ) from None
    except OSError as exc:
        raise RayExecutorError(
            f"Ray cluster at {address}: nothing answers there within {timeout_s:g} s "
            f"({exc.strerror or exc}); start it (`ray start --head --disable-usage-stats`) or fix "
            "ray_address / $RAY_ADDRESS"
        ) from None
    if not address.startswith("ray://"):  # ray:// is the Ray Client server, not the GCS
        _check_gcs(address)


def _connect(where: tuple[str, int], timeout_s: float) -> None:
    """Connect to one of the addresses ``where`` resolves to within ``timeout_s`` in all, each address
    its share of the time left (``socket.create_connection`` gave each the whole timeout: 30 s for a
    name with an IPv6 and an IPv4 address). The last address's error when none answers."""
    found = socket.getaddrinfo(*where, type=socket.SOCK_STREAM)
    deadline, error = time.monotonic() + timeout_s, OSError("no address")
    for left, (family, kind, proto, _, addr) in zip(range(len(found), 0, -1), found):
        with contextlib.closing(socket.socket(family, kind, proto)) as sock:
            sock.settimeout(max(deadline - time.monotonic(), 0.0) / left)
            try:
                sock.connect(addr)
                return
            except OSError as exc:
                error = exc
    raise error


def _check_gcs(address: str) -> None:
    """Something answers at ``address``: it must be a Ray GCS. ``ray.init`` retries anything else
    for minutes on end; Ray's own client (as ``ray healthcheck`` makes it) gives up after its
    timeout (40 s measured against a port that accepts and says nothing)."""
    import ray

    from benchmark.ray_resources import RayExecutorError

    client = getattr(getattr(ray, "_raylet", None), "GcsClient", None)
    if client is None:  # another Ray's internals: ray.init decides
        return
    try:
        client(address=address)
    except Exception as exc:  # noqa: BLE001 - Ray's RpcError and whatever its client raises
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayExecutorError(
            f"Ray cluster at {address}: something answers there, but no Ray GCS ({first}); give the "
            "address `ray start --head` printed (its GCS port, 6379 by default)"
        ) from None


def logs_dir(ray: Any) -> str:
    """Where this session's worker logs are (``RAY_TMPDIR`` or ``_temp_dir`` honoured)."""
    node = getattr(getattr(ray, "_private", None), "worker", None)
    node = getattr(node, "_global_node", None)
    with contextlib.suppress(AttributeError, TypeError):
        return str(node.get_logs_dir_path())
    return str(Path(os.environ.get("RAY_TMPDIR") or "/tmp") / "ray" / "session_latest" / "logs")


# ----------------------------------------------------------------------------- the reaper
def start_reaper() -> subprocess.Popen:
    """The reaper of this process's descendants (see the module docstring); :func:`stop_reaper` ends it."""
    reaper = subprocess.Popen(
        [sys.executable, "-m", "benchmark.ray_cluster", str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    sync_reaper(reaper)  # it has taken its "before" snapshot: what we start from now on is reaped
    return reaper


def sync_reaper(reaper: subprocess.Popen) -> None:
    """Make the reaper record the descendants now (after ``ray.init``) and wait for it to say so."""
    with contextlib.suppress(OSError, ValueError):
        reaper.stdin.write(b"s")
        reaper.stdin.flush()
        reaper.stdout.readline()


def stop_reaper(reaper: subprocess.Popen) -> None:
    """Close its pipe: it kills what is left of the descendants it saw (agents slow to exit) and ends."""
    with contextlib.suppress(OSError):
        reaper.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        reaper.wait(timeout=30)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of ``pid``, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def descendants(root: int, skip: int) -> dict[int, int]:
    """pid -> start time of every live descendant of ``root`` (``skip`` and its own excluded)."""
    children: dict[int, list[int]] = {}
    starts = {}
    for entry in Path("/proc").glob("[0-9]*"):
        info = _stat(int(entry.name))
        if info is not None:
            children.setdefault(info[0], []).append(int(entry.name))
            starts[int(entry.name)] = info[1]
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child != skip and child in starts:
                found[child] = starts[child]
                todo.append(child)
    return found


def reap(driver: int) -> None:
    """Watch ``driver`` until stdin closes, then SIGKILL every descendant seen that still runs."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C or scancel of the whole group: reap first
        signal.signal(sig, signal.SIG_IGN)
    before = descendants(driver, os.getpid())  # the driver's other children are not Ray's
    seen: dict[int, int] = {}
    while True:
        seen.update({p: t for p, t in descendants(driver, os.getpid()).items() if before.get(p) != t})
        ready, _, _ = select.select([sys.stdin], [], [], REAP_POLL_S)
        if not ready:
            continue
        if not os.read(sys.stdin.fileno(), 1):
            break
        seen.update({p: t for p, t in descendants(driver, os.getpid()).items() if before.get(p) != t})
        sys.stdout.write("seen\n")  # the answer to sync_reaper
        sys.stdout.flush()
    time.sleep(REAP_POLL_S)  # a clean shutdown's processes exit by themselves in this time
    for pid, start in seen.items():
        info = _stat(pid)
        if info is not None and info[1] == start:  # the same process, not a reused pid
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    reap(int(sys.argv[1]))
