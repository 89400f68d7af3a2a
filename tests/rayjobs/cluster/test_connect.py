"""rayjobs.cluster.connect: which Ray cluster a command joins, refused within seconds when it does not answer.

Every case runs against real sockets on 127.0.0.1 (a closed port, an HTTP server, a listening socket that speaks
nothing) and the real ``ray_current_cluster`` file rule; none of them starts Ray.
"""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from rayjobs.cluster import connect


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the with-block ends: nobody listens there


@pytest.fixture
def no_ray_env(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "raytmp"))  # a node where `ray start` never ran
    return tmp_path / "raytmp"


def test_no_address_means_a_local_ray(no_ray_env):
    t = connect.resolve(None)
    assert t.local and t.address is None and "local Ray" in t.source
    assert connect.resolve("local").local


def test_closed_port_is_refused_naming_address_and_source(no_ray_env):
    port = _closed_port()
    with pytest.raises(connect.RayAddressError, match=rf"no Ray cluster answers at 127\.0\.0\.1:{port} \(--address\): "):
        connect.resolve(f"127.0.0.1:{port}")


def test_ray_address_environment_variable_is_probed(no_ray_env, monkeypatch):
    port = _closed_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(connect.RayAddressError, match=rf"127\.0\.0\.1:{port} \(RAY_ADDRESS\).*unset RAY_ADDRESS"):
        connect.resolve(None)


def test_auto_without_a_cluster_on_this_node(no_ray_env):
    with pytest.raises(
        connect.RayAddressError, match=r"--address=auto: no Ray cluster was started on this node \(.*ray_current_cluster"
    ):
        connect.resolve("auto")


def test_auto_reads_the_address_ray_start_recorded(no_ray_env):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    try:
        port = srv.getsockname()[1]
        (no_ray_env / "ray").mkdir(parents=True)  # Ray's temp dir is $RAY_TMPDIR/ray
        (no_ray_env / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}\n")
        t = connect.resolve("auto", timeout=1.0)  # a listener that never answers the HTTP/2 preface: left to ray.init
        assert t.address == f"127.0.0.1:{port}" and "auto via" in t.source and not t.local
    finally:
        srv.close()


@pytest.mark.parametrize("bad", ["127.0.0.1", "host:port", "127.0.0.1:99999", ":6379"])
def test_malformed_address(no_ray_env, bad):
    with pytest.raises(connect.RayAddressError, match=rf"Ray address '{bad}' \(--address\) is not HOST:PORT"):
        connect.resolve(bad)


def test_dashboard_url_is_not_a_gcs_address(no_ray_env):
    with pytest.raises(connect.RayAddressError, match=r"is the dashboard / Jobs API address: submit with `ray job submit"):
        connect.resolve("http://127.0.0.1:8265")


def test_an_http_server_port_is_recognised(no_ray_env):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        with pytest.raises(connect.RayAddressError, match=rf"127\.0\.0\.1:{port} \(--address\) is an HTTP server"):
            connect.resolve(f"127.0.0.1:{port}")
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------- the commands: one line, exit 2, nothing written
REPO = __import__("pathlib").Path(__file__).resolve().parents[3]


def _command(which: str, tmp_path) -> list[str]:
    import sys

    if which == "search":
        return [sys.executable, "-m", "rayjobs.search", "--preset", "smoke", "--out", str(tmp_path / "out")]
    return [
        sys.executable,
        "-m",
        "rayjobs.train",
        "--data",
        str(tmp_path / "data"),
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "r",
        "--preset",
        "smoke",
    ]


@pytest.mark.parametrize("which", ["search", "train"])
@pytest.mark.parametrize("how", ["flag", "env", "auto"])
def test_commands_refuse_an_unreachable_cluster_before_writing(which, how, tmp_path):
    import os
    import subprocess

    port = _closed_port()
    cmd = _command(which, tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(tmp_path / "raytmp")  # no `ray start` on this "node"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    if how == "flag":
        cmd += ["--address", f"127.0.0.1:{port}"]
        expect = f"no Ray cluster answers at 127.0.0.1:{port} (--address)"
    elif how == "env":
        env["RAY_ADDRESS"] = f"127.0.0.1:{port}"
        expect = f"no Ray cluster answers at 127.0.0.1:{port} (RAY_ADDRESS)"
    else:
        cmd += ["--address", "auto"]
        expect = "--address=auto: no Ray cluster was started on this node"
    before = sorted(p.name for p in tmp_path.iterdir())
    # The timeout only guards against the hang this test exists for (ray.init retries for minutes).
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert err[-1].startswith("error: ") and expect in err[-1] and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no study, search record, run or labels file
