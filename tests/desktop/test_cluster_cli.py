"""`tokentrace batch/evaluate --workers N | --ray ADDRESS` as a user runs them: a real Ray of the
command's own, a cluster started with `ray start --head`, Ctrl-C, and the errors one line each."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from desktop.cli import main

TEXTS = ["52 year old woman , ER positive , HER2 negative .",
         "45 year old woman , HER2 positive , grade 3 .",
         "60 year old woman , ER negative , grade 2 ."]
RAY = Path(sys.executable).with_name("ray")


def write_cases(path: Path, count: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"c{k}", "text": TEXTS[k % 3]}) + "\n"
                            for k in range(count)))
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def ray_home():
    """A Ray temp folder of this test's own (short: Ray's socket paths must fit 107 bytes).
    Every process of a Ray started under it names it on its command line, so the test can find
    and stop that Ray alone, never another one running on the machine."""
    folder = tempfile.mkdtemp(prefix="tt-ray-", dir="/tmp")
    yield folder
    for pid in ray_processes(folder):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(folder, ignore_errors=True)


def ray_processes(folder: str) -> set[int]:
    """The pids of the processes of the Ray whose temp folder is ``folder``: named on their
    command line, or (Ray's agents, which rename themselves) writing their logs there."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():  # this test joined it as a driver
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if folder.encode() in handle.read():
                    found.add(int(entry))
                    continue
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}").startswith(folder):
                        found.add(int(entry))
                        break
    return found


def test_ctrl_c_stops_the_workers_and_a_serial_run_resumes(tiny_model_folder, tmp_path,
                                                           capsys, ray_home):
    cases, out = write_cases(tmp_path / "cases.jsonl", 6), tmp_path / "out"
    command = [sys.executable, "-m", "desktop.cli", "batch", "--cases", str(cases), "--out",
               str(out), "--model", str(tiny_model_folder), "--max-new-tokens", "8",
               "--method", "ig", "--steps", "600", "--quiet", "--workers", "2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "RAY_TMPDIR": ray_home},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600
    while not list(out.glob("records/*.json")):
        assert time.time() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Run the same command again to resume" in err and "Traceback" not in err
    done = sorted(p.name for p in (out / "records").glob("*.json"))
    assert 1 <= len(done) < 6
    deadline = time.time() + 30
    assert list(Path(ray_home).iterdir())  # its Ray ran there
    while ray_processes(ray_home):  # and ended with it
        assert time.time() < deadline, ray_processes(ray_home)
        time.sleep(0.2)

    # The workers' records are the serial run's own: a run without --workers resumes them.
    first = (out / "records" / done[0]).read_text()
    assert main(command[3:-2]) == 0
    assert f"{len(done)} already done" in capsys.readouterr().out
    assert len(list((out / "records").glob("*.json"))) == 6
    assert (out / "records" / done[0]).read_text() == first


def test_evaluate_on_a_cluster_started_with_ray_start(tiny_model_folder, tmp_path, capsys,
                                                      ray_home):
    port = free_port()
    started = subprocess.run(
        [str(RAY), "start", "--head", "--port", str(port), "--num-cpus", "2",
         "--node-ip-address", "127.0.0.1", "--include-dashboard", "false",
         "--disable-usage-stats", "--temp-dir", ray_home], capture_output=True, text=True,
        timeout=120)
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        cases = write_cases(tmp_path / "cases.jsonl", 3)
        common = ["evaluate", "--cases", str(cases), "--model", str(tiny_model_folder),
                  "--methods", "ifr,random", "--max-new-tokens", "3", "--samples", "1",
                  "--no-soft", "--quiet"]
        assert main([*common, "--json", str(tmp_path / "cluster.json"), "--ray",
                     f"127.0.0.1:{port}", "--workers", "2"]) == 0
        # One thread, as each of the two workers on two CPUs has: matrix products summed in
        # another order round differently, and these figures are differences of near-equal
        # probabilities (on some CPUs 2e-7 apart at 8e-5 with two threads against one).
        assert main([*common, "--json", str(tmp_path / "serial.json"), "--threads", "1"]) == 0
    finally:
        # Not `ray stop`, which stops every Ray on the machine: the fixture stops this one.
        assert ray_processes(ray_home)
    capsys.readouterr()

    def results(name):
        report = json.loads((tmp_path / name).read_text())
        return [{k: v for k, v in r.items() if k != "seconds"} for r in report["results"]]

    assert len(results("cluster.json")) == 6
    assert results("cluster.json") == results("serial.json")


def test_an_unreachable_cluster_is_one_line(tiny_model_folder, tmp_path):
    cases = write_cases(tmp_path / "cases.jsonl", 1)
    port = free_port()
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "desktop.cli", "batch", "--cases", str(cases),
                           "--out", str(tmp_path / "out"), "--model", str(tiny_model_folder),
                           "--ray", f"127.0.0.1:{port}"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 8, done.stderr
    assert done.stderr.splitlines() == [
        f"tokentrace: cannot reach the Ray cluster at 127.0.0.1:{port} (Connection refused); "
        "is `ray start --head --port PORT` running there, and is the port open?"]
    assert time.monotonic() - started < 60
    assert not (tmp_path / "out" / "records").exists()


def test_without_ray_the_command_says_how_to_install_it(tmp_path):
    cases = write_cases(tmp_path / "cases.jsonl", 1)
    hide_ray = ("import sys; sys.modules['ray'] = None; from desktop.cli import main; "
                "sys.exit(main(sys.argv[1:]))")
    # Said before any model is looked for (this one does not exist).
    done = subprocess.run([sys.executable, "-c", hide_ray, "batch", "--cases", str(cases),
                           "--out", str(tmp_path / "out"), "--workers", "2", "--model",
                           str(tmp_path / "no-such-model")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 8, done.stderr
    assert done.stderr.splitlines() == [
        "tokentrace: Ray is not installed: pip install 'tokentrace[cluster]' (or, from a "
        "checkout, pip install -e '.[cluster]')"]


def test_cluster_settings_are_checked_before_anything_starts(tmp_path, capsys):
    cases = write_cases(tmp_path / "cases.jsonl", 1)
    for argv, message in ((["--ray", "ray://head:10001"], "not a ray:// client address"),
                          (["--ray", "head:port"], "--ray needs HOST:PORT")):
        assert main(["batch", "--cases", str(cases), "--out", str(tmp_path / "o"), "--model",
                     str(tmp_path / "no-such-model"), *argv]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        main(["evaluate", "--cases", str(cases), "--json", str(tmp_path / "e.json"),
              "--workers", "0"])
    assert stopped.value.code == 2 and "must be at least 1" in capsys.readouterr().err
