"""A local Ray dies with its driver: the reaper kills what the driver started once the driver is gone,
even ``kill -9``'d (Ray's dashboard and runtime-env agents otherwise outlive it by a minute or more),
and leaves alone what the driver had started before. Plus the offline start's environment."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark import ray_cluster
from benchmark.ray_resources import RayExecutorError

ROOT = Path(__file__).resolve().parents[2]
BOUND_S = 600.0  # a bound on each wait, never a timing: a loaded box may take minutes
# The driver's processes live far longer than any wait, so an agent the reaper misses is still alive
# when the wait for its death gives up (it cannot pass by the agent simply ending); the test kills them.
LIFE_S = 6 * BOUND_S

# A driver that starts the reaper, then a raylet-like child whose own child (an agent) survives the
# raylet's death: re-parented to init, as Ray's agents are when the driver is killed.
# argv: the file to write the pids to, and LIFE_S.
DRIVER = """
import subprocess, sys, time
from pathlib import Path
import pytest

from benchmark import ray_cluster

life = float(sys.argv[2])
sleep = [sys.executable, "-c", f"import time; time.sleep({life})"]
older = subprocess.Popen(sleep)  # started before Ray: not Ray's, never reaped
reaper = ray_cluster.start_reaper()
raylet_code = (
    "import subprocess, sys, time; "
    f"agent = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep({life})']); "
    f"print(agent.pid, flush=True); time.sleep({life})"
)
raylet = subprocess.Popen([sys.executable, "-c", raylet_code], stdout=subprocess.PIPE, text=True)
agent = int(raylet.stdout.readline())
ray_cluster.sync_reaper(reaper)
Path(sys.argv[1]).write_text(f"{older.pid} {raylet.pid} {agent} {reaper.pid}")
time.sleep(life)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent has not collected it yet


def _wait(done, what: str) -> None:
    end = time.monotonic() + BOUND_S
    while not done():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_killed_driver_takes_what_it_started_with_it(tmp_path):
    ready = tmp_path / "pids"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(ready), str(LIFE_S)], cwd=ROOT, env=env)
    older = raylet = agent = reaper = 0
    try:
        _wait(lambda: ready.exists() or driver.poll() is not None, "the driver")
        older, raylet, agent, reaper = (int(p) for p in ready.read_text().split())
        driver.kill()  # kill -9: no clean-up code runs in the driver
        driver.wait()
        os.kill(raylet, signal.SIGKILL)  # Ray's raylet and GCS fate-share with the driver
        _wait(lambda: not _alive(agent), "the orphaned agent to be reaped")
        _wait(lambda: not _alive(reaper), "the reaper to finish")
        assert _alive(older)  # what the driver ran before Ray is not Ray's
    finally:
        driver.kill()  # a wait that gave up first: the driver would outlive the test by LIFE_S
        driver.wait()
        for pid in (older, raylet, agent):
            if pid:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def test_the_offline_start_points_http_at_a_dead_loopback_port_and_restores_it(monkeypatch):
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    monkeypatch.delenv("http_proxy", raising=False)
    with ray_cluster.offline_start() as user:
        proxy = os.environ["http_proxy"]
        assert proxy.startswith("http://127.0.0.1:") and os.environ["HTTPS_PROXY"] == proxy
        assert os.environ["no_proxy"] == os.environ["no_grpc_proxy"] == ray_cluster.LOOPBACK
        port = int(proxy.rsplit(":", 1)[1])
        import socket

        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0  # refused: nothing leaves, nothing waits
    assert user["https_proxy"] == "http://proxy.example:3128" and user["http_proxy"] == ""
    assert os.environ["https_proxy"] == "http://proxy.example:3128" and "http_proxy" not in os.environ


def test_a_local_ray_declares_the_gpus_torch_sees(monkeypatch):
    """Ray counts GPUs through NVML only: where NVML does not load but CUDA works it would declare
    none, and a GPU grid would be refused. The local start declares torch's count."""
    import ray
    import torch

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for name in ("RAY_USAGE_STATS_ENABLED", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):  # connect sets them
        monkeypatch.setenv(name, "0")
    assert ray_cluster.connect(None, {"A": "1"}) == (ray, True)
    assert seen["num_gpus"] == 2 and seen["runtime_env"]["env_vars"]["A"] == "1"


def test_a_cluster_address_where_nothing_answers_is_one_line(monkeypatch, tmp_path, capsys):
    """ray.init retried such an address for over 3 minutes, a warning every few seconds."""
    import socket

    import ray

    from benchmark.cli import main

    monkeypatch.setattr(ray, "init", lambda **kwargs: pytest.fail("ray.init was called"))
    with socket.create_server(("127.0.0.1", 0)) as bound:  # a port nothing listens on once released
        closed = f"127.0.0.1:{bound.getsockname()[1]}"
    smoke = Path(__file__).resolve().parents[2] / "benchmark" / "configs" / "smoke.yaml"
    argv = ["run", "--config", str(smoke), "--models", "empty", "--folds", "0", "--executor", "ray"]
    assert main([*argv, "--ray-address", closed, "--results-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"Ray cluster at {closed}: nothing answers there within 15 s" in err[0]
    with socket.create_server(("127.0.0.1", 0)) as server:  # something answers: Ray's turn
        ray_cluster.check_reachable(f"ray://127.0.0.1:{server.getsockname()[1]}")  # a Ray Client port

        def no_gcs(address):  # what Ray's client raised after 40 s against this silent port
            raise RuntimeError("Timed out while waiting for GCS to become available.")

        monkeypatch.setattr(ray._raylet, "GcsClient", no_gcs)
        with pytest.raises(RayExecutorError, match=r"something answers there, but no Ray GCS \(Timed out"):
            ray_cluster.check_reachable(f"127.0.0.1:{server.getsockname()[1]}")
    assert ray_cluster.endpoint("auto") is None and ray_cluster.endpoint("[::1]:6379") == ("::1", 6379)
    assert ray_cluster.endpoint("::1") is None  # a bare IPv6 address: no port to read

    def unresolvable(*args, **kwargs):  # no resolver is asked: a test touches no network
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unresolvable)
    with pytest.raises(RayExecutorError, match=r"at no-such-host:6379: cannot resolve no-such-host \(Name"):
        ray_cluster.check_reachable("no-such-host:6379")


def test_a_name_with_two_addresses_shares_one_timeout(monkeypatch):
    """create_connection gave each resolved address the whole 15 s: a name with an IPv6 and an IPv4
    address where nothing answers took 30 s to refuse. Now each address gets its share of the time
    left, and the second is still tried (the cluster may answer on IPv4 alone)."""
    import socket

    tried, clock = [], [100.0]

    class Silent:  # a dropped SYN: the connect waits out its timeout
        def __init__(self, family, kind, proto):
            self.family = family

        def settimeout(self, value):
            self.timeout = value

        def connect(self, addr):
            tried.append((self.family, round(self.timeout, 1)))
            if self.family == socket.AF_INET6:
                clock[0] += self.timeout  # waited it out
                raise TimeoutError("timed out")

        def close(self):
            pass

    addresses = [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 6379, 0, 0)),
                 (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 6379))]  # fmt: skip
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: addresses)
    monkeypatch.setattr(socket, "socket", Silent)
    monkeypatch.setattr(ray_cluster.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(ray_cluster, "_check_gcs", lambda address: None)
    ray_cluster.check_reachable("head.cluster:6379", timeout_s=10.0)  # the IPv4 address answers
    assert [family for family, _ in tried] == [socket.AF_INET6, socket.AF_INET]
    assert tried == [(socket.AF_INET6, 5.0), (socket.AF_INET, 5.0)]  # its half each: the second what is left
    tried.clear()
    addresses[1] = (socket.AF_INET6, *addresses[1][1:])  # now neither answers: one line, one timeout
    with pytest.raises(RayExecutorError, match="nothing answers there within 10 s"):
        ray_cluster.check_reachable("head.cluster:6379", timeout_s=10.0)
    assert [t for _, t in tried] == [5.0, 5.0]  # 10 s in all, as the line says
