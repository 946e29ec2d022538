"""The offline guarantee: switches, the in-process guard, and a run with no network at all."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from engine.offline import NetworkBlockedError, network_guard_installed


def test_switches_are_set_and_guard_installed():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert network_guard_installed()


@pytest.mark.parametrize("address", [("93.184.216.34", 80), ("2606:2800:220:1::", 443),
                                     ("huggingface.co", 443)])
def test_guard_refuses_non_loopback(address):
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock, \
            pytest.raises(NetworkBlockedError, match="TokenTrace is offline"):
        sock.connect(address)


def test_guard_allows_loopback():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=2) as client:
            assert client.getpeername() == server.getsockname()


def test_guard_refuses_datagrams_and_name_lookups_but_not_loopback():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, \
            pytest.raises(NetworkBlockedError, match="datagram"):
        sock.sendto(b"case text", ("8.8.8.8", 53))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, \
            pytest.raises(NetworkBlockedError, match="datagram"):
        sock.sendto(b"case text", 0, ("8.8.8.8", 53))
    with pytest.raises(NetworkBlockedError, match=r"resolve 'huggingface\.co'"):
        socket.getaddrinfo("huggingface.co", 443)
    assert socket.getaddrinfo("localhost", 80)  # loopback names still resolve
    assert socket.getaddrinfo("127.0.0.1", 80)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        receiver.bind(("127.0.0.1", 0))
        sender.sendto(b"ok", receiver.getsockname())
        assert receiver.recv(2) == b"ok"


def _unshare_works() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rn", "true"], capture_output=True).returncode == 0


def test_explanation_runs_with_no_network(tiny_model_folder, tmp_path):
    """Run the real command in a network namespace with no interface but loopback."""
    out = tmp_path / "record.json"
    command = [sys.executable, "-m", "desktop.cli", "explain", "ER positive , HER2 negative .",
               "--model", str(tiny_model_folder), "--target", "endocrine therapy",
               "--json", str(out), "--quiet"]
    isolated = _unshare_works()
    if isolated:
        command = ["unshare", "-rn", *command]
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads(out.read_text())
    assert record["answer"]["text"] == "endocrine therapy"
    assert record["answer"]["forced"] is True
    assert any(abs(v) > 0 for v in record["attribution"]["sequence"])
    if not isolated:  # without user namespaces the in-process guard is the proof
        assert "Traceback" not in done.stderr


def test_engine_never_imports_qt_or_desktop():
    code = ("import sys, engine, engine.explain, engine.models, engine.methods, engine.record, "
            "engine.grouping, engine.hardware; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('PySide6', 'desktop', 'pyqtgraph')); print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
