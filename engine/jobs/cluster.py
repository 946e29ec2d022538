"""Batch and evaluation over Ray worker processes: on this machine, or on a cluster.

``RayPool`` is a pool (``engine.jobs.pool``) whose work is done by Ray actors, each holding its
own copy of the model, loaded once. The driver (``run_batch``, ``run_evaluation``) stays in this
process and writes every file; workers only compute and hand back plain results, which are
checked on arrival exactly like a record opened from disk.

A worker that dies (killed, out of memory, its node lost) loses only the case it was on: the
case goes back to the queue for another worker, and after ``tries`` deaths on it, to the
failures with the reason. A replacement worker is started in the dead one's place. Cancel (or
Ctrl-C) kills every worker at once; what finished is already written.

Privacy: on this machine (``address=None``) Ray is started bound to 127.0.0.1 with usage
statistics and the dashboard off, and every worker imports ``engine``, which installs the offline
guard (a worker whose guard is missing is refused). With ``address``, cases are sent to that
cluster: the user's explicit choice, and this process may reach that host only.

Ray is an optional extra (``pip install 'tokentrace[cluster]'``); nothing else in TokenTrace
imports this module or Ray.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine import errors
from engine.cases import Case
from engine.errors import ClusterError, InvalidSettingsError, TokenTraceError, WorkerLostError
from engine.evaluation import CaseResult, EvaluationSettings
from engine.explain import ExplainRequest
from engine.jobs.pool import EvaluationJob
from engine.models import ModelRequest
from engine.record import Explanation, ModelInfo, from_plain, to_plain
from engine.task import TaskState

INSTALL_HINT = ("Ray is not installed: pip install 'tokentrace[cluster]' (or, from a checkout, "
                "pip install -e '.[cluster]')")
DEFAULT_PORT = 6379  # where `ray start --head` listens unless told otherwise
LOCAL_OBJECT_STORE = 256 * 2**20  # records are small: no need for Ray's 30% of the RAM
_WAIT_S = 0.2  # how often the driver looks at cancel while workers compute
_PLACE_WARN_S = 60.0  # a first worker not ready by then is reported (it may not fit anywhere)
_STALL_S = 600.0  # cases left, no worker, replacements not ready for this long: give up


@dataclass(frozen=True)
class ClusterSettings:
    """Where the workers run and how many there are."""

    workers: int | None = None  # None: one per GPU of the cluster, else one per node
    address: str | None = None  # None: a Ray of our own on this machine; else HOST:PORT
    tries: int = 2  # a case whose worker dies this many times goes to the failures
    threads: int | None = None  # CPU threads per worker (None: the CPUs shared out)

    def validate(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise InvalidSettingsError("--workers must be at least 1")
        if self.tries < 1:
            raise InvalidSettingsError("--tries must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise InvalidSettingsError("--threads must be at least 1")
        if self.address is not None:
            split_address(self.address)


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT (or HOST, meaning the default port) of a cluster's head."""
    text = address.strip()
    if text.startswith("ray://"):
        raise InvalidSettingsError(
            "--ray takes the head's HOST:PORT (as `ray start --head` prints), not a ray:// "
            "client address")
    if text.startswith("["):  # [IPv6]:PORT or [IPv6]
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else (str(DEFAULT_PORT) if not rest else "x")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:  # a name, an IPv4 address or a bare IPv6 address: the default port
        host, port = text, str(DEFAULT_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidSettingsError(f"--ray needs HOST:PORT, e.g. 10.0.0.5:6379 (got {address!r})")
    return host, int(port)


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ClusterError(INSTALL_HINT) from exc
    return ray


def _quiet_ray_environment() -> None:
    """What every Ray process started from here inherits: no usage statistics sent home, no
    prompts, no log spam."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_DISABLE_DOCKER_CPU_WARNING", "1")


_QUIET = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
          "namespace": "tokentrace"}


def start_local_ray(ray: Any, cpus: int | None = None) -> None:
    """A Ray of our own on this machine, reachable from it only: every Ray server bound to
    127.0.0.1, no dashboard, no usage statistics, a small object store.

    Ray advertises (and binds to) the machine's network address even when told 127.0.0.1,
    unless its switch for single-machine clusters is off; it is read by this process (Ray is
    already imported) and by every Ray process started from here, for the start-up only."""
    _quiet_ray_environment()
    from ray._private import ray_constants

    switch, before = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", os.environ.get(
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    enabled = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[switch], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        ray.init(address="local", num_cpus=cpus or os.cpu_count() or 1,
                 object_store_memory=LOCAL_OBJECT_STORE, _node_ip_address="127.0.0.1",
                 **_QUIET)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = enabled
        if before is None:
            os.environ.pop(switch, None)
        else:
            os.environ[switch] = before
    address = ray.util.get_node_ip_address()
    if address != "127.0.0.1":
        ray.shutdown()
        raise ClusterError(f"Ray started on {address}, not on 127.0.0.1 only; refusing it")


class CaseWorker:
    """One Ray actor's state: the model, loaded once. Every method returns plain data (no
    exception crosses the wire: an engine error comes back as its class name and message)."""

    def __init__(self, request: ModelRequest, source: str, threads: int) -> None:
        import torch

        import engine.models  # noqa: F401 - transformers is imported while the others start

        torch.set_num_threads(threads)
        self.request, self.source, self.threads, self.loaded = request, source, threads, None

    def load(self) -> dict[str, Any]:
        import engine
        from engine.models import load_model
        from engine.offline import network_guard_installed

        try:
            self.loaded = load_model(self.request)
        except TokenTraceError as exc:
            return {"error": _error_plain(exc)}
        # Loaded by its absolute path, named as the user gave it: the serial run's records.
        self.loaded.info = replace(self.loaded.info, source=self.source)
        return {"info": to_plain(self.loaded.info), "version": engine.__version__,
                "guard": network_guard_installed(), "host": socket.gethostname(),
                "pid": os.getpid(), "threads": self.threads}

    def explain(self, request: ExplainRequest) -> dict[str, Any]:
        from engine.explain import explain

        try:
            return {"record": explain(request, self.loaded).to_dict()}
        except TokenTraceError as exc:
            return {"error": _error_plain(exc)}

    def evaluate(self, case: Case, settings: EvaluationSettings, done: tuple[str, ...]
                 ) -> dict[str, Any]:
        from engine.evaluation import evaluate_case

        results: list[dict[str, Any]] = []
        try:
            evaluate_case(self.loaded, case, settings, skip=done,
                          on_result=lambda result: results.append(result.to_dict()))
        except TokenTraceError as exc:
            return {"results": results, "error": _error_plain(exc)}
        return {"results": results}


def _error_plain(exc: TokenTraceError) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc)}


def _error_from(plain: dict[str, str]) -> TokenTraceError:
    kind = getattr(errors, str(plain.get("type")), None)
    if not (isinstance(kind, type) and issubclass(kind, TokenTraceError)):
        kind = TokenTraceError
    return kind(str(plain.get("message", "")))


@dataclass
class _Job:
    key: str
    method: str  # the CaseWorker method that does it
    args: tuple[Any, ...]
    deaths: list[str] = field(default_factory=list)


class RayPool:
    """Workers on Ray, each with the model loaded once. Use as a context manager (or call
    :meth:`close`): the workers, and a Ray started here, end with it."""

    def __init__(self, model: ModelRequest, cluster: ClusterSettings,
                 state: TaskState | None = None,
                 log: Callable[[str], None] = lambda line: None) -> None:
        cluster.validate()
        self._ray = import_ray()
        self._log = log
        self.cluster = cluster
        self._own_ray = False
        self._allowed: list[str] = []  # hosts the offline guard lets this pool reach
        self._workers: dict[Any, dict[str, Any]] = {}  # ready actor -> what its load() said
        self._actors: list[Any] = []  # every actor started, ready or not
        self._loading: dict[Any, Any] = {}  # a replacement's load answer -> the replacement
        self.restarts = 0  # replacement workers started for ones that died
        state = state or TaskState()
        self._source = source = model.source
        if source != "embedded" and Path(source).expanduser().exists():
            source = str(Path(source).expanduser().absolute())  # workers have their own cwd
        self._request = replace(model, source=source)
        try:
            self._connect()
            self._plan()
            self.info = self._start_workers(state)
        except BaseException:
            self.close()
            raise

    # -- starting ---------------------------------------------------------------------------

    def _connect(self) -> None:
        ray = self._ray
        _quiet_ray_environment()
        address = self.cluster.address
        if address is not None:
            host, port = split_address(address)
            from engine.offline import allow_host

            # The user's explicit choice: this process may reach that host (Ray's own traffic,
            # from its C++ core, goes to every node of that cluster: docs/cluster.md).
            self._allowed = [host, *allow_host(host)]
            try:  # a clear line now, rather than Ray's retries for a minute
                socket.create_connection((host, port), timeout=5).close()
            except OSError as exc:
                raise ClusterError(
                    f"cannot reach the Ray cluster at {host}:{port} ({exc.strerror or exc}); "
                    "is `ray start --head --port PORT` running there, and is the port open?"
                ) from exc
        if ray.is_initialized():  # a caller (a notebook, a test) already started or joined one
            if address is not None:
                raise ClusterError("Ray is already running in this process: give no address, "
                                   "or call ray.shutdown() first")
            if ray.util.get_node_ip_address() not in ("127.0.0.1", "::1"):
                raise ClusterError("the Ray already running in this process is on the network, "
                                   "not this machine alone: pass its address explicitly")
            return
        if address is None:
            start_local_ray(ray)
        else:
            _token_auth_when_at_hand()
            try:
                ray.init(address=f"{host}:{port}", **_QUIET)
            except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
                if _caused_by(exc, "AuthenticationError"):
                    raise ClusterError(
                        f"the Ray cluster at {host}:{port} refused this machine: it needs the "
                        "cluster's token (run `ray get-auth-token` on its head, then set "
                        "RAY_AUTH_TOKEN here; docs/cluster.md)") from exc
                if "No node info found" in str(exc):
                    raise ClusterError(
                        f"this machine is not a node of the Ray cluster at {host}:{port}: run "
                        f"`ray start --address {host}:{port}` here first (docs/cluster.md)"
                    ) from exc
                raise ClusterError(f"cannot join the Ray cluster at {host}:{port}: "
                                   f"{str(exc).splitlines()[0]}") from exc
        self._own_ray = True

    def _plan(self) -> None:
        """How many workers, and the CPUs, threads and GPU share of each. On this machine the
        CPUs are shared out exactly; on a cluster each worker asks for one CPU (so it fits on
        any node) and is spread over the nodes, and its threads are the CPUs per worker."""
        resources = self._ray.cluster_resources()
        cpus = float(resources.get("CPU", 1))
        gpus = float(resources.get("GPU", 0)) if self._request.device != "cpu" else 0.0
        nodes = sum(1 for node in self._ray.nodes() if node.get("Alive"))
        count = self.cluster.workers or (int(gpus) if gpus >= 1 else max(1, nodes))
        self.count = count
        share = math.floor(10_000 / count) / 10_000  # Ray counts in 1/10,000ths: never over 1
        self.gpus_each = 0.0 if gpus == 0 else (1.0 if gpus >= count else gpus * share)
        self.cpus_each = max(0.0001, cpus * share) if self.cluster.address is None else min(
            1.0, cpus * share)
        self.threads = self.cluster.threads or max(1, math.floor(cpus / count))

    def _new_actor(self) -> Any:
        remote = self._ray.remote(CaseWorker).options(
            num_cpus=self.cpus_each, num_gpus=self.gpus_each, max_restarts=0,
            max_concurrency=1,
            scheduling_strategy="DEFAULT" if self.cluster.address is None else "SPREAD")
        actor = remote.remote(self._request, self._source, self.threads)
        self._actors.append(actor)
        return actor

    def _start_workers(self, state: TaskState) -> ModelInfo:
        """Every worker process starts at once, but the first loads the model alone (a GGUF is
        converted once, into the cache the others then read), then the rest together. Every
        worker must hold the same weights, tokenizer, precision and engine version, with the
        offline guard installed."""
        actors = [self._new_actor() for _ in range(self.count)]
        state.progressed("load", 0, self.count)
        info = self._accept(actors[0], self._wait_for(actors[0].load.remote(), state), None)
        loading = {actor.load.remote(): actor for actor in actors[1:]}
        while loading:
            state.progressed("load", self.count - len(loading), self.count)
            ready, _ = self._ray.wait(list(loading), num_returns=1, timeout=_WAIT_S)
            state.check()
            for ref in ready:
                self._accept(loading.pop(ref), self._get(ref), info)
        state.progressed("load", self.count, self.count)
        self._log(f"{self.count} worker{'s' if self.count > 1 else ''} ready ({self.threads} "
                  f"CPU thread{'s' if self.threads > 1 else ''} each"
                  + (f", {self.gpus_each:g} GPU each" if self.gpus_each else "") + ")")
        return info

    def _wait_for(self, ref: Any, state: TaskState) -> Any:
        started = time.monotonic()
        warned = False
        while not self._ray.wait([ref], timeout=_WAIT_S)[0]:
            state.check()
            if not warned and time.monotonic() - started > _PLACE_WARN_S:
                warned = True
                self._log(f"still waiting for the first worker after {_PLACE_WARN_S:.0f} s: a "
                          "large model loads slowly, or Ray has no node with "
                          f"{self.cpus_each:g} CPU{'s' if self.cpus_each != 1 else ''}"
                          + (f" and {self.gpus_each:g} GPU" if self.gpus_each else "")
                          + " free (`ray status` shows it)")
        return self._get(ref)

    def _get(self, ref: Any) -> Any:
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayError as exc:
            raise ClusterError(f"a worker could not start: {_first_line(exc)}") from exc

    def _accept(self, actor: Any, said: dict[str, Any], info: ModelInfo | None) -> ModelInfo:
        import engine

        if "error" in said:
            raise _error_from(said["error"])
        where = f"the worker on {said['host']} (pid {said['pid']})"
        if not said["guard"]:
            raise ClusterError(f"{where} runs without the offline guard; refusing it")
        if said["version"] != engine.__version__:
            raise ClusterError(f"{where} runs TokenTrace {said['version']}, this machine "
                               f"{engine.__version__}: install the same version on every node")
        theirs = from_plain(ModelInfo, said["info"])
        if info is not None and _identity(theirs) != _identity(info):
            raise ClusterError(
                f"{where} loaded other weights, tokenizer, chat template, context or precision "
                f"({theirs.name}, {theirs.dtype}) than the first worker ({info.name}, "
                f"{info.dtype}); every node needs the same model files")
        self._workers[actor] = said
        return theirs

    # -- the pool ---------------------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        return [said["pid"] for said in self._workers.values()]

    def explain(self, jobs: Iterable[tuple[str, ExplainRequest]], state: TaskState
                ) -> Iterator[tuple[str, Explanation | TokenTraceError]]:
        todo = (_Job(case_id, "explain", (request,)) for case_id, request in jobs)
        for job, said in self._run(todo, state):
            if isinstance(said, TokenTraceError):
                yield job.key, said
            elif "error" in said:
                yield job.key, _error_from(said["error"])
            else:
                yield job.key, self._record(job, said["record"])

    def evaluate(self, jobs: Iterable[EvaluationJob], settings: EvaluationSettings,
                 state: TaskState, on_result: Callable[[str, CaseResult], None]
                 ) -> Iterator[tuple[str, TokenTraceError | None]]:
        todo = (_Job(case.id, "evaluate", (case, settings, done)) for case, done in jobs)
        for job, said in self._run(todo, state):
            if isinstance(said, TokenTraceError):
                yield job.key, said
                continue
            for plain in said["results"]:
                on_result(job.key, CaseResult.from_dict(plain))
            yield job.key, _error_from(said["error"]) if "error" in said else None

    def _record(self, job: _Job, plain: Any) -> Explanation | TokenTraceError:
        """A worker's record, checked like a file opened from disk, for this case and model."""
        try:
            record = Explanation.from_dict(plain)
        except (TokenTraceError, KeyError, TypeError, ValueError) as exc:
            return ClusterError(f"the worker sent back a record that does not check: {exc}")
        request = job.args[0]
        if record.prompt.case_text != request.case_text or \
                _identity(record.model) != _identity(self.info):
            return ClusterError("the worker sent back a record for another case or model")
        return record

    def _run(self, jobs: Iterable[_Job], state: TaskState
             ) -> Iterator[tuple[_Job, dict[str, Any] | TokenTraceError]]:
        """Hand jobs to idle workers, give back each answer as it comes, and put the job of a
        worker that died back in the queue (or out, after ``tries`` deaths)."""
        ray = self._ray
        queue = deque(jobs)
        idle = list(self._workers)
        running: dict[Any, tuple[Any, _Job]] = {}  # answer ref -> (actor, job)
        loading = self._loading  # replacements still loading (kept for the next run)
        stalled_since: float | None = None
        try:
            while queue or running:
                state.check()
                while idle and queue:
                    actor, job = idle.pop(), queue.popleft()
                    running[getattr(actor, job.method).remote(*job.args)] = (actor, job)
                if not running and not loading:
                    raise ClusterError("no worker is left: every one died, and so did their "
                                       f"replacements ({self.restarts} started)")
                if running:
                    stalled_since = None
                elif stalled_since is None:
                    stalled_since = time.monotonic()
                elif time.monotonic() - stalled_since > _STALL_S:
                    raise ClusterError(
                        f"no worker for {_STALL_S:.0f} s: the replacements for the workers that "
                        "died could not be placed or loaded (`ray status` shows the cluster)")
                ready, _ = ray.wait([*running, *loading], num_returns=1, timeout=_WAIT_S)
                for ref in ready:
                    if ref in loading:
                        actor = loading.pop(ref)
                        try:
                            self._accept(actor, self._get(ref), self.info)
                            idle.append(actor)
                        except TokenTraceError as exc:
                            self._log(f"a replacement worker could not start: {exc}")
                            self._kill(actor)
                        continue
                    actor, job = running.pop(ref)
                    try:
                        said = ray.get(ref)
                    except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                            ray.exceptions.ObjectLostError, ray.exceptions.OutOfMemoryError,
                            ray.exceptions.NodeDiedError) as exc:
                        if not self._lost(actor, job, exc, queue, loading):
                            times = "once" if len(job.deaths) == 1 else f"{len(job.deaths)} times"
                            yield job, WorkerLostError(
                                f"its worker died {times} ({'; '.join(job.deaths)})")
                        continue
                    except ray.exceptions.RayTaskError as exc:
                        # An error that is not the engine's (a bug): as the serial run raises it.
                        raise exc.as_instanceof_cause() from None
                    idle.append(actor)
                    yield job, said
        finally:
            if state.cancelled or queue or running:
                self.close()  # stopped early (cancel, Ctrl-C, an error): no worker lingers

    def _lost(self, actor: Any, job: _Job, exc: BaseException, queue: deque[_Job],
              loading: dict[Any, Any]) -> bool:
        """A worker is gone (or unusable): retire it, start a replacement, and put its job back
        in the queue unless it has used its tries. Whether the job was put back."""
        said = self._workers.pop(actor, {})
        self._kill(actor)  # an unreachable actor may still hold its CPUs or GPU
        reason = _death_reason(exc)
        job.deaths.append(reason)
        where = f"on {said.get('host', '?')}, pid {said.get('pid', '?')}"
        again = len(job.deaths) < self.cluster.tries
        if again:
            queue.appendleft(job)
            self._log(f"case {job.key}: its worker ({where}) died: {reason}; trying again "
                      f"({len(job.deaths)} of {self.cluster.tries} tries used)")
        else:
            self._log(f"case {job.key}: its worker ({where}) died: {reason}; giving up after "
                      f"{self.cluster.tries} tries")
        if self.restarts < self.count * self.cluster.tries:  # a crash loop ends
            self.restarts += 1
            actor = self._new_actor()
            loading[actor.load.remote()] = actor
        return again

    def _kill(self, actor: Any) -> None:
        with contextlib.suppress(Exception):  # already gone
            self._ray.kill(actor, no_restart=True)

    def close(self) -> None:
        """Stop every worker, and Ray itself if it was started here."""
        ray = self._ray
        for actor in self._actors:
            self._kill(actor)
        self._workers.clear()
        self._actors.clear()
        self._loading.clear()
        if self._own_ray and ray.is_initialized():
            ray.shutdown()
            self._own_ray = False
        if self._allowed:
            from engine.offline import forget_hosts

            forget_hosts(self._allowed)  # the cluster's host is reachable while the pool lives
            self._allowed = []

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _token_auth_when_at_hand() -> None:
    """Ray clusters use token authentication by default, but a driver that joins one by its
    address must turn it on itself: we do, when a token is at hand (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) and RAY_AUTH_MODE does not say otherwise."""
    if "RAY_AUTH_MODE" in os.environ or not (
            os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or (Path.home() / ".ray" / "auth_token").is_file()):
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    with contextlib.suppress(ImportError, AttributeError):
        from ray._raylet import Config

        Config.initialize("")  # Ray caches its settings at import: read them again, as it does


def _caused_by(exc: BaseException | None, name: str) -> bool:
    while exc is not None:
        if type(exc).__name__ == name:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _death_reason(exc: BaseException) -> str:
    name = type(exc).__name__
    if "OutOfMemory" in name:
        return "out of memory"
    if "NodeDied" in name:
        return "its node was lost"
    return "the worker process ended"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def _identity(info: ModelInfo) -> tuple[object, ...]:
    """What makes two workers' records interchangeable: the same weights, tokenizer, chat
    template, context length and precision (a batch resumes records by these)."""
    return (info.sha256, info.tokenizer_sha256, info.template_sha256, info.context_length,
            info.dtype)
