"""Batch and evaluate on Ray workers: a real local Ray (two CPU slots, bound to 127.0.0.1) and
the tiny model, loaded by every worker from its folder."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time

import pytest
import ray
import torch

from engine.errors import Cancelled, ClusterError
from engine.evaluation import EvaluationSettings
from engine.explain import ExplainRequest
from engine.jobs.batch import BatchSettings, record_path, run_batch
from engine.jobs.cluster import ClusterSettings, RayPool, start_local_ray
from engine.jobs.evaluate import EvaluateSettings, run_evaluation
from engine.metrics import MetricSettings
from engine.models import ModelRequest, load_model
from engine.offline import NetworkBlockedError
from engine.record import Explanation
from engine.task import TaskState

TEXTS = ["52 year old woman , ER positive , HER2 negative .",
         "45 year old woman , HER2 positive , grade 3 .",
         "60 year old woman , ER negative , grade 2 .",
         "38 year old woman , HER2 negative , grade 1 ."]
TEMPLATE = ExplainRequest("placeholder", max_new_tokens=3, matrix=False, method="ifr")


@pytest.fixture(scope="module")
def local_ray():
    start_local_ray(ray, cpus=2)
    yield
    ray.shutdown()


@pytest.fixture
def cases(tmp_path):
    def write(count: int):
        path = tmp_path / f"cases-{count}.jsonl"
        path.write_text("".join(json.dumps({"id": f"c{k}", "text": TEXTS[k % len(TEXTS)]})
                                + "\n" for k in range(count)))
        return path
    return write


def comparable(path):
    """A record without what differs between any two runs: timings, memory, creation time."""
    data = Explanation.load(path).to_dict()
    for key in ("timings", "hardware", "created_at"):
        data.pop(key)
    return data


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:  # a zombie is dead too
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_write_what_the_serial_run_writes(local_ray, tiny_model_folder, cases,
                                                  tmp_path, monkeypatch):
    path = cases(4)
    monkeypatch.chdir(tiny_model_folder.parent)  # a model named by a relative path
    model = ModelRequest(tiny_model_folder.name)
    loaded = load_model(model)
    settings = EvaluationSettings(methods=("ifr", "grad-ellm", "random"), max_new_tokens=3,
                                  metrics=MetricSettings(samples=1, soft=False))
    with RayPool(model, ClusterSettings(workers=2, threads=1)) as pool:
        assert pool.info == loaded.info
        assert len(set(pool.worker_pids())) == 2 and os.getpid() not in pool.worker_pids()
        pooled = run_batch(BatchSettings(path, tmp_path / "pooled", TEMPLATE), pool)
        pooled_eval = run_evaluation(EvaluateSettings(path, settings, json=tmp_path / "p.json"),
                                     pool)
    # One thread here too, as each worker has: matrix products summed in another order round
    # differently on some CPUs, and the records are compared to the last digit.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = run_batch(BatchSettings(path, tmp_path / "serial", TEMPLATE), loaded)
        serial_eval = run_evaluation(EvaluateSettings(path, settings, json=tmp_path / "s.json"),
                                     loaded)
    finally:
        torch.set_num_threads(before)

    assert (pooled.explained, pooled.failed, serial.explained) == (4, 0, 4)
    from engine.cases import load_cases

    for case in load_cases(path):
        assert comparable(record_path(tmp_path / "pooled", case)) == \
            comparable(record_path(tmp_path / "serial", case))
    summary = lambda out: [line.split(",")[:5] for line in  # noqa: E731 - no timings
                           (out / "summary.csv").read_text().splitlines()]
    assert summary(tmp_path / "pooled") == summary(tmp_path / "serial")
    assert json.loads((tmp_path / "pooled" / "records.json").read_text()) == \
        json.loads((tmp_path / "serial" / "records.json").read_text())

    def results(report):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in report["results"]]

    assert len(results(pooled_eval)) == 12
    assert results(pooled_eval) == results(serial_eval)
    assert pooled_eval["summary"] == serial_eval["summary"]
    # A serial rerun takes the workers' results as its own: nothing is computed again.
    again = run_evaluation(EvaluateSettings(path, settings, json=tmp_path / "p.json"), loaded)
    assert results(again) == results(serial_eval)
    assert run_batch(BatchSettings(path, tmp_path / "pooled", TEMPLATE), loaded).resumed == 4


def test_a_killed_worker_loses_nothing(local_ray, tiny_model_folder, cases, tmp_path):
    path = cases(12)
    lines: list[str] = []
    with RayPool(ModelRequest(str(tiny_model_folder)), ClusterSettings(workers=2, tries=2),
                 log=lines.append) as pool:
        victim = pool.worker_pids()[0]
        killed = []

        def log(line: str) -> None:
            lines.append(line)
            if "done" in line and not killed:
                os.kill(victim, signal.SIGKILL)  # mid-run: ten cases are still to come
                killed.append(victim)

        result = run_batch(BatchSettings(path, tmp_path / "out", TEMPLATE), pool, log=log)
        assert victim not in pool.worker_pids() and pool.restarts == 1
    assert (result.explained, result.failed) == (12, 0)
    assert json.loads((tmp_path / "out" / "failures.json").read_text()) == {}
    assert any(f"pid {victim}) died: the worker process ended; trying again" in line
               for line in lines), lines
    assert len(list((tmp_path / "out" / "records").glob("*.json"))) == 12


def test_a_case_whose_worker_keeps_dying_goes_to_the_failures(local_ray, tiny_model_folder,
                                                              cases, tmp_path):
    path = cases(6)
    out = tmp_path / "out"
    with RayPool(ModelRequest(str(tiny_model_folder)), ClusterSettings(workers=2, tries=1)
                 ) as pool:
        victim = pool.worker_pids()[1]
        killed = []

        def log(line: str) -> None:
            if "done" in line and not killed:
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)

        result = run_batch(BatchSettings(path, out, TEMPLATE), pool, log=log)
    failures = json.loads((out / "failures.json").read_text())
    assert result.failed == len(failures) == 1
    assert result.explained == 5
    assert list(failures.values()) == ["its worker died once (the worker process ended)"]
    # The next run does what is missing, and only that.
    rerun = run_batch(BatchSettings(path, out, TEMPLATE), load_model(
        ModelRequest(str(tiny_model_folder))))
    assert (rerun.explained, rerun.resumed, rerun.failed) == (1, 5, 0)


def test_cancel_stops_every_worker_and_keeps_what_finished(local_ray, tiny_model_folder, cases,
                                                           tmp_path):
    path = cases(12)
    out = tmp_path / "out"
    state = TaskState()
    pool = RayPool(ModelRequest(str(tiny_model_folder)), ClusterSettings(workers=2))
    pids = pool.worker_pids()

    def log(line: str) -> None:
        if "done" in line:
            state.cancel()

    with pytest.raises(Cancelled):
        run_batch(BatchSettings(path, out, TEMPLATE), pool, state, log=log)
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "a worker outlived the cancel"
        time.sleep(0.1)
    kept = len(list((out / "records").glob("*.json")))
    assert 1 <= kept < 12
    rerun = run_batch(BatchSettings(path, out, TEMPLATE),
                      load_model(ModelRequest(str(tiny_model_folder))))
    assert (rerun.resumed, rerun.explained) == (kept, 12 - kept)


def _listening(pids: set[int]) -> list[str]:
    """The local addresses (hex, as /proc/net has them) that these processes listen on."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN, one of theirs
                    found.append(fields[1].rsplit(":", 1)[0])
    return found


def _descendants(root: int) -> set[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as handle:
                parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
    found, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found


def _reach(worker, address):
    """Run inside a worker: what connecting to ``address`` does there."""
    try:
        socket.create_connection(address, timeout=2).close()
    except NetworkBlockedError as exc:
        return f"blocked: {exc}"
    except OSError as exc:
        return f"not blocked: {exc}"
    return "connected"


def test_ray_here_is_loopback_only_and_every_worker_is_guarded(local_ray, tiny_model_folder):
    """With --workers, nothing of Ray's can be reached from another machine (its GCS, raylet,
    object manager and every worker listen on 127.0.0.1 alone), and every worker refuses to
    reach another machine."""
    loopback = {"0100007F", "0000000000000000FFFF00000100007F",
                "00000000000000000000000001000000"}
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with RayPool(ModelRequest(str(tiny_model_folder)), ClusterSettings(workers=2)) as pool:
        processes = _descendants(os.getpid())
        assert set(pool.worker_pids()) <= processes
        addresses = _listening(processes)
        assert len(addresses) >= 4  # GCS, raylet, the workers...
        assert set(addresses) <= loopback, addresses
        assert ray.util.get_node_ip_address() == "127.0.0.1"

        actors = list(pool._workers)
        outside = ray.get([a.__ray_call__.remote(_reach, ("192.0.2.1", 80)) for a in actors])
        assert all(found.startswith("blocked: TokenTrace is offline") for found in outside)
        # Loopback (Ray's own traffic) is allowed: a closed local port is refused by the OS.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        inside = ray.get(actors[0].__ray_call__.remote(_reach, ("127.0.0.1", port)))
        assert inside.startswith("not blocked")


def test_an_address_is_checked_before_anything_is_sent(tiny_model_folder):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once closed
    started = time.monotonic()
    with pytest.raises(ClusterError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        RayPool(ModelRequest(str(tiny_model_folder)),
                ClusterSettings(address=f"127.0.0.1:{port}"))
    assert time.monotonic() - started < 10
    with pytest.raises(Exception, match="HOST:PORT"):
        ClusterSettings(address="ray://head:10001").validate()


def test_cluster_addresses():
    from engine.jobs.cluster import split_address

    assert split_address("10.0.0.5:7000") == ("10.0.0.5", 7000)
    assert split_address("head") == ("head", 6379)
    assert split_address("[fd00::5]:7000") == ("fd00::5", 7000)
    assert split_address("fd00::5") == ("fd00::5", 6379)
    for bad in ("head:port", "[fd00::5]x", ":6379", "head:0", "head:70000"):
        with pytest.raises(Exception, match="HOST:PORT"):
            split_address(bad)


def test_the_chosen_host_is_reachable_only_while_it_is_chosen():
    from engine import offline

    assert not offline._permitted(("192.0.2.77", 6379))
    chosen = ["192.0.2.77", *offline.allow_host("192.0.2.77")]
    assert offline._permitted(("192.0.2.77", 6379))
    assert not offline._permitted(("192.0.2.78", 6379))  # that host, and only it
    offline.forget_hosts(chosen)
    assert not offline._permitted(("192.0.2.77", 6379))


def test_a_worker_with_another_chat_template_is_refused(tiny_model_folder):
    # Before: only weights, tokenizer and precision were compared; a node whose model folder
    # had another chat template was accepted, and its records filed as the first worker's.
    import dataclasses

    import engine
    from engine.record import to_plain

    first = load_model(ModelRequest(str(tiny_model_folder))).info
    pool = object.__new__(RayPool)  # the acceptance rule alone: no Ray needed
    pool._workers = {}

    def said(info):
        return {"host": "node-b", "pid": 7, "guard": True, "version": engine.__version__,
                "info": to_plain(info)}

    assert pool._accept("a", said(first), first) == first
    for change in ({"template_sha256": "b" * 64}, {"context_length": 128}):
        other = dataclasses.replace(first, **change)
        with pytest.raises(ClusterError, match="chat template, context or precision"):
            pool._accept("b", said(other), first)
