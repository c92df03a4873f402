"""What a run keeps between epochs without costing an epoch's time: snapshots, and a writer in the background.

On a GPU an epoch of this network takes a fraction of a second, and writing a
186 MB checkpoint (weights and momentum) with fsync takes longer than that. So
at each epoch's end the run only copies its state into buffers it owns (one
device-to-device copy on a GPU: a fraction of a millisecond), and a single
background thread turns snapshots into files: the checkpoint every N epochs,
the metrics file, the curves at most once a minute. Files are still written
atomically (temporary sibling, fsync, rename), one at a time, in the order
asked; a failed write is reported on the main thread at the next request.
"""

from __future__ import annotations

import copy
import os
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch

from alexpipe.terminal import note

from . import checkpoint
from .errors import TrainingError
from .metrics import write_jsonl
from .plot import plot_curves

if TYPE_CHECKING:
    from .parts import Data, Progress, Setup
    from .step import TrainStep

RUN_FILES = ("config.json", "metrics.jsonl", "curves.png", "last.pt", "best.pt", "summary.json")

def _leaves(obj: Any, out: list[torch.Tensor], seen: dict) -> Any:
    """`obj` with every tensor replaced by its position in `out` (tensors appended there). One tensor reached
    under two names (a module registered twice) is one leaf, as torch.save stores it once."""
    if torch.is_tensor(obj):
        key = (obj.data_ptr(), obj.shape, obj.stride(), obj.dtype, obj.device)
        if key not in seen:
            out.append(obj)
            seen[key] = _Leaf(len(out) - 1)
        return seen[key]
    if isinstance(obj, dict):
        return {k: _leaves(v, out, seen) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_leaves(v, out, seen) for v in obj)
    return copy.deepcopy(obj)


def _fill(obj: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(obj, _Leaf):
        return tensors[obj.i]
    if isinstance(obj, dict):
        return {k: _fill(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_fill(v, tensors) for v in obj)
    return obj


class _Leaf:
    __slots__ = ("i",)

    def __init__(self, i: int):
        self.i = i


class Snapshot:
    """A copy of a nested state (dicts, lists, tensors, plain values) in buffers this object owns.

    `take` copies the state's tensors into the buffers with one batched copy
    queued on the device (no wait); `host` gives the state back as CPU tensors
    (it waits for that copy only), and may run on the writer thread: a `take`
    meanwhile waits until it is done. The buffers are made on the first `take`
    and reused while the state keeps its shapes.
    """

    def __init__(self) -> None:
        self._structure: Any = None
        self._buffers: list[torch.Tensor] = []
        self._ready: Optional[torch.cuda.Event] = None
        self._free = threading.Event()  # cleared while a `host` copy is owed to a job
        self._free.set()
        self.meta: dict[str, Any] = {}  # what the snapshot is of (epoch, ...): set by the caller

    @property
    def empty(self) -> bool:
        return self._structure is None

    def take(self, state: Any, **meta: Any) -> None:
        self._free.wait()
        tensors: list[torch.Tensor] = []
        structure = _leaves(state, tensors, {})
        if [(t.shape, t.dtype, t.device) for t in tensors] != [(b.shape, b.dtype, b.device) for b in self._buffers]:
            self._buffers = [torch.empty_like(t) for t in tensors]
        torch._foreach_copy_(self._buffers, [t.detach() for t in tensors])
        if any(b.device.type == "cuda" for b in self._buffers):
            self._ready = torch.cuda.Event()
            self._ready.record()
        self._structure, self.meta = structure, dict(meta)

    def host(self) -> Any:
        """The state with its tensors on the CPU (new tensors: the buffers may be overwritten afterwards)."""
        if self._ready is not None:
            self._ready.synchronize()
        return _fill(self._structure, [b.to("cpu", copy=True) for b in self._buffers])


class WriteFailed(Exception):
    """A background write failed; its message names the file."""


class Writer:
    """One background thread that runs write jobs in the order they were submitted.

    A job that fails stops the ones after it; the failure is raised (as
    WriteFailed) by the next `submit` or `drain` on the main thread.
    """

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._error: Optional[str] = None
        self._thread: Optional[threading.Thread] = None
        self.busy_seconds = 0.0  # time the thread spent writing: what the run would have waited for without it

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                self._jobs.task_done()
                return
            job, reads = item
            try:
                if self._error is None:
                    t0 = time.perf_counter()
                    if reads is None:
                        job()
                    else:
                        state = reads.host()
                        reads._free.set()  # the main thread may take the next snapshot while this one is written
                        job(state)
                    self.busy_seconds += time.perf_counter() - t0
            except Exception as exc:  # noqa: BLE001 - reported on the main thread, with the file it was writing
                self._error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, (OSError, ValueError)) \
                    else str(exc)
            finally:
                if reads is not None:
                    reads._free.set()
                self._jobs.task_done()

    def submit(self, job: Callable[..., None], reads: Optional[Snapshot] = None) -> None:
        """Queue `job`. With `reads`, the thread first copies that snapshot to the host (no `take` may overwrite
        it before then) and calls `job(state)` with the copy."""
        self._raise()
        if reads is not None:
            reads._free.clear()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="alexpipe-writer", daemon=True)
            self._thread.start()
        self._jobs.put((job, reads))

    def drain(self) -> None:
        """Wait until every submitted job has run (a second Ctrl-C interrupts the wait)."""
        while self._thread is not None and self._jobs.unfinished_tasks:
            time.sleep(0.01)
        self._raise()

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None

    @property
    def failed(self) -> bool:
        return self._error is not None

    def _raise(self) -> None:
        if self._error is not None:
            raise WriteFailed(self._error)


def remove_temporaries(folder: Path, names: tuple[str, ...]) -> None:
    """Remove this process's temporary files for `names` in `folder`: a write abandoned by a second Ctrl-C
    leaves none behind (the thread writing one may go on into the unlinked file; its rename then fails)."""
    pid = str(os.getpid())
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return
    for p in entries:
        if p.name.startswith(".") and pid in p.name and any(p.name.startswith(f".{n}.") for n in names):
            p.unlink(missing_ok=True)


class Books:
    """What rank 0 keeps of a run between epochs, and the files it makes of it.

    `keep` snapshots the end of every epoch; `publish` queues the files due:
    last.pt every `--checkpoint-every` epochs and after the last one, the
    metrics file every epoch, the curves at most once a minute. `close` writes
    whatever is newer than the files (last.pt, best.pt, the metrics, the
    curves) and waits for the writer: at the end, on Ctrl-C, on a failure.
    """

    CURVES_EVERY = 60.0  # seconds

    def __init__(self, setup: "Setup", data: "Data", model: torch.nn.Module, step: "TrainStep",
                 config: dict[str, Any], progress: "Progress"):
        self.out, self.writes, self.recipe = setup.out, setup.world.is_main, setup.recipe
        self.checkpoint_every = setup.opt.checkpoint_every
        self.identity, self.classes = data.identity, list(data.classes)
        self.model, self.step, self.config, self.progress = model, step, config, progress
        self.writer = Writer()
        self.latest, self.best = Snapshot(), Snapshot()
        self.written = progress.start_epoch - 1  # the epoch last.pt holds (a resumed run's, to begin with)
        self.curves_at = time.perf_counter()
        self.tail: list[dict[str, Any]] = []  # records after the epochs' in the metrics file (the test's)
        self.closed = False

    def keep(self, epoch: int, rngs: Any) -> None:
        """This epoch's end, everything a checkpoint holds but the run's records (added when it is written)."""
        step = self.step
        self.latest.take({"epoch": epoch, "model": self.model.state_dict(),
                          "optimizer": step.optimizer.state_dict(), "schedule": step.schedule.state_dict(),
                          "scaler": step.scaler.state_dict() if step.scaler.is_enabled() else None, "rng": rngs},
                         epoch=epoch, history=len(self.progress.history), best=dict(self.progress.best))

    def publish(self, epoch: int) -> None:
        if epoch % self.checkpoint_every == 0 or epoch == self.recipe.epochs:
            self._last()
        self._submit(self._metrics)
        if time.perf_counter() - self.curves_at >= self.CURVES_EVERY:
            self._curves()

    def close(self, interrupted: bool = False, abandon: bool = False) -> int:
        """Write what is not yet on disk and wait for it; the epoch last.pt then holds. After a failure, a write
        that fails too is not raised over the first error. A second Ctrl-C (`abandon`, or one arriving while
        this waits) abandons the writes: their temporary files go, and what is on disk stays as it was."""
        if self.closed or not self.writes:
            return self.written
        self.closed = True
        failed_before = self.writer.failed  # a failure the run is already stopping for
        try:
            if abandon:
                raise KeyboardInterrupt
            if not self.latest.empty and self.latest.meta["epoch"] > self.written:
                self._last()
            if not self.best.empty:
                self._submit(self._best_file, reads=self.best)
            if self.progress.history:
                self._submit(self._metrics)
                self._curves()
            self.writer.drain()
        except KeyboardInterrupt:
            remove_temporaries(self.out, RUN_FILES)
            self.written = self._on_disk()
        except (WriteFailed, TrainingError) as exc:
            if not interrupted:
                raise TrainingError(str(exc)) from None
            if not failed_before:  # the run stops for another reason: say this too
                note(str(exc))
        finally:
            self.writer.close()
        return self.written

    def _on_disk(self) -> int:
        try:
            return int(checkpoint.load(self.out / "last.pt")["epoch"])
        except (ValueError, KeyError, TypeError):
            return 0

    def _submit(self, job: Callable[..., None], reads: Optional[Snapshot] = None) -> None:
        try:
            self.writer.submit(job, reads=reads)
        except WriteFailed as exc:
            raise TrainingError(str(exc)) from None

    def _last(self) -> None:
        meta = self.latest.meta
        self.written = meta["epoch"]
        self._submit(lambda state: checkpoint.save_atomic(self._records(state, meta), self.out / "last.pt"),
                     reads=self.latest)

    def _best_file(self, state: dict) -> None:
        """best.pt: the best epoch's weights and the run's records up to it (no optimiser: it is for evaluating)."""
        epoch = self.best.meta["epoch"]
        meta = {"history": sum(1 for h in self.progress.history if h["epoch"] <= epoch), "best": self.progress.best}
        checkpoint.save_atomic(self._records({**state, "epoch": epoch}, meta), self.out / "best.pt")

    def _records(self, state: dict, meta: dict) -> dict:
        return {**checkpoint.plain_numbers(state), "recipe": self.recipe.to_dict(), "data": self.identity,
                "history": [dict(h) for h in self.progress.history[:meta["history"]]], "best": meta["best"],
                "classes": self.classes, "run": self.config}

    def _metrics(self) -> None:
        records = [self.config, *[dict(h) for h in self.progress.history], *self.tail]
        write_jsonl(self.out / "metrics.jsonl", records)

    def _curves(self) -> None:
        self.curves_at = time.perf_counter()
        history = [dict(h) for h in self.progress.history]
        self._submit(lambda: plot_curves(history, self.out / "curves.png",
                                         title=f"alexpipe {self.recipe.name} recipe"))


__all__ = ["Books", "Snapshot", "WriteFailed", "Writer", "remove_temporaries"]
