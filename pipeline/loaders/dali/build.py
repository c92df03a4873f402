"""Build and load the project's DALI plugin (the AlexpipePcaJitter operator).

Like torch's JIT C++ extensions, the plugin is compiled on first use into a
per-user cache and reused afterwards:

    $XDG_CACHE_HOME/alexpipe/dali_plugin/<dali version>-<hash>/libalexpipe_dali.so
    (~/.cache when XDG_CACHE_HOME is unset; ALEXPIPE_CACHE_DIR overrides the folder)

The hash covers the sources in plugin/ (beside this file) and every compiler flag,
so an edited source or another toolchain gets its own build, and the DALI
version in the name keeps a library away from a DALI it was not compiled
against. Each build happens in a temporary folder that is renamed into place,
so a half-written library is never loaded and concurrent builds are harmless.

- pca_jitter.cc: g++ -std=c++20 with nvidia.dali.sysconfig's compile flags;
- pca_jitter.cu: nvcc, when a CUDA toolkit is found ($CUDA_HOME, $CUDA_PATH,
  /usr/local/cuda-13.0, nvcc on PATH, /usr/local/cuda), for the architectures
  in $ALEXPIPE_CUDA_ARCH (default: DEFAULT_CUDA_ARCHS, plus PTX of the newest);
  the library then registers both the CPU and the GPU operator. Without nvcc
  it is a CPU-only library (still compiled against the CUDA headers, which
  DALI's own headers include);
- linked with nvidia.dali.sysconfig's link flags (and the static CUDA runtime).

ALEXPIPE_DALI_PLUGIN=/path/to/lib.so loads a prebuilt library instead.

A process can hold only one library that registers AlexpipePcaJitter (DALI
aborts the process on a second registration), so `load_plugin` refuses a
second, different library instead of loading it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ...cache import cache_dir

OP_NAME = "AlexpipePcaJitter"
FN_NAME = "alexpipe_pca_jitter"
LIB_NAME = "libalexpipe_dali.so"
SOURCE_DIR = Path(__file__).resolve().parent / "plugin"
SOURCES = ("pca_jitter.h", "pca_jitter.cc", "pca_jitter.cu")
DEFAULT_CUDA_ARCHS = ("75", "80", "86", "89", "90", "100", "120")


class PluginUnavailable(RuntimeError):
    """The plugin could not be built, loaded or verified; the message is one line saying why."""


@dataclass(frozen=True)
class BuildResult:
    """Where the library is, whether this call compiled it (False: reused from the cache), and if it has CUDA."""

    path: Path
    built: bool
    with_cuda: bool


def dali_version() -> str:
    import nvidia.dali

    return nvidia.dali.__version__


def cache_root() -> Path:
    """The folder holding one sub-folder per (DALI version, source hash)."""
    return cache_dir() / "dali_plugin"


def find_cuda_home() -> Optional[Path]:
    """A CUDA toolkit folder with bin/nvcc, or None (then the plugin is CPU-only)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda-13.0"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if c and (Path(c) / "bin" / "nvcc").is_file():
            return Path(c)
    return None


def _cuda_header_dir(cuda_home: Optional[Path]) -> Optional[Path]:
    """Where cuda_runtime.h is: DALI's headers include it even for CPU code, so a CPU-only build needs
    the toolkit's headers too (an installed toolkit without nvcc will do)."""
    roots = [cuda_home, os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda-13.0",
             "/usr/local/cuda", "/usr"]
    dirs = [Path(r) / "include" for r in roots if r]
    return next((d for d in dirs if (d / "cuda_runtime.h").is_file()), None)


def cuda_archs() -> tuple[str, ...]:
    """GPU architectures to compile for: $ALEXPIPE_CUDA_ARCH ("80;90", "8.0,9.0a") or the default list,
    which is fixed (not probed from the local GPU) so one cached build serves every machine."""
    env = os.environ.get("ALEXPIPE_CUDA_ARCH", "").replace(",", ";")
    archs = tuple(a.strip().replace(".", "") for a in env.split(";") if a.strip())
    return archs or DEFAULT_CUDA_ARCHS


def nvcc_arch_flags(archs: Sequence[str]) -> list[str]:
    """-gencode flags: machine code for each architecture, plus PTX of the newest, which the driver
    JIT-compiles on GPUs newer than any in the list."""
    flags = []
    for a in archs:
        flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    newest = max(archs, key=lambda a: int("".join(ch for ch in a if ch.isdigit()) or 0))
    return flags + ["-gencode", f"arch=compute_{newest},code=compute_{newest}"]


@dataclass(frozen=True)
class _BuildCommands:
    """The commands of one build, with {src}/{out} placeholders, so they can be hashed before running."""

    cxx: list[str]
    nvcc: Optional[list[str]]
    link: list[str]

    @property
    def with_cuda(self) -> bool:
        return self.nvcc is not None


def _build_commands(cuda_home: Optional[Path], with_cuda: Optional[bool]) -> _BuildCommands:
    from nvidia.dali import sysconfig

    if with_cuda is None:
        with_cuda = cuda_home is not None
    if with_cuda and cuda_home is None:
        raise PluginUnavailable("a CUDA build was asked for but no nvcc was found (set CUDA_HOME)")
    headers = _cuda_header_dir(cuda_home)
    include = [f"-I{headers}"] if headers else []
    cxx = [os.environ.get("CXX", "g++"), "-std=c++20", "-O3", "-fPIC", *sysconfig.get_compile_flags(),
           *include, *(["-DALEXPIPE_WITH_CUDA"] if with_cuda else []), "-c", "{src}", "-o", "{out}"]
    link = [os.environ.get("CXX", "g++"), "-shared", "-o", "{out}", "{objects}", *sysconfig.get_link_flags()]
    nvcc = None
    if with_cuda:
        nvcc = [str(cuda_home / "bin" / "nvcc"), "-std=c++17", "-O3", "-Xcompiler", "-fPIC",
                *nvcc_arch_flags(cuda_archs()), "-c", "{src}", "-o", "{out}"]
        lib64 = cuda_home / "lib64"
        link += [f"-L{lib64}", "-lcudart_static", "-ldl", "-lrt", "-lpthread"]
    return _BuildCommands(cxx, nvcc, link)


def source_hash(source_dir: Path, recipe_parts: Sequence[Sequence[str]] = ()) -> str:
    """SHA-256 (16 hex digits) of the plugin sources and the build commands."""
    h = hashlib.sha256()
    for name in SOURCES:
        path = source_dir / name
        if not path.is_file():
            raise PluginUnavailable(f"plugin source {path} is missing")
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    for part in recipe_parts:
        h.update(json.dumps(list(part)).encode())
    return h.hexdigest()[:16]


def _run(cmd: list[str], cwd: Path) -> subprocess.Popen:
    try:
        return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as e:
        raise PluginUnavailable(f"cannot run {cmd[0]}: {e.strerror}") from None


def _check(proc: subprocess.Popen, out: Optional[str], what: str) -> None:
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (out or "").splitlines() if ln.strip()]
        first = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "no output")
        raise PluginUnavailable(f"{what} failed (exit {proc.returncode}): {first}")


def _fill(cmd: list[str], **values: str | list[str]) -> list[str]:
    out: list[str] = []
    for part in cmd:
        key = part[1:-1] if part.startswith("{") and part.endswith("}") else None
        if key in values:
            v = values[key]
            out += v if isinstance(v, list) else [v]
        else:
            out.append(part)
    return out


def build_plugin(*, source_dir: Optional[Path] = None, cache_dir: Optional[Path] = None,
                 with_cuda: Optional[bool] = None, cuda_home: Optional[Path] = None) -> BuildResult:
    """The cached library for these sources and flags, compiling it first if the cache has none.

    with_cuda: None = whenever nvcc is found. Raises PluginUnavailable (one line) when a compiler fails.
    """
    source_dir = Path(source_dir) if source_dir is not None else SOURCE_DIR
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
    cuda_home = cuda_home if cuda_home is not None else find_cuda_home()
    recipe = _build_commands(cuda_home, with_cuda)
    key = source_hash(source_dir, [recipe.cxx, recipe.nvcc or [], recipe.link])
    final = cache_dir / f"{dali_version()}-{key}"
    lib = final / LIB_NAME
    if lib.is_file():
        return BuildResult(lib, False, recipe.with_cuda)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=cache_dir))
    try:
        start = time.perf_counter()
        jobs = [(_run(_fill(recipe.cxx, src=str(source_dir / "pca_jitter.cc"), out="pca_jitter_cc.o"), tmp),
                 "compiling pca_jitter.cc")]
        objects = ["pca_jitter_cc.o"]
        if recipe.nvcc is not None:
            jobs.append((_run(_fill(recipe.nvcc, src=str(source_dir / "pca_jitter.cu"), out="pca_jitter_cu.o"),
                              tmp), "compiling pca_jitter.cu"))
            objects.append("pca_jitter_cu.o")
        # both compile at once; collect both before reporting the first failure
        results = [(proc, proc.communicate()[0], what) for proc, what in jobs]
        for proc, out, what in results:
            _check(proc, out, what)
        link = _run(_fill(recipe.link, out=LIB_NAME, objects=objects), tmp)
        _check(link, link.communicate()[0], "linking the plugin")
        for obj in objects:
            (tmp / obj).unlink()
        info = {"dali_version": dali_version(), "hash": key, "with_cuda": recipe.with_cuda,
                "cuda_home": str(cuda_home) if recipe.with_cuda else None, "seconds": time.perf_counter() - start,
                "commands": {"cxx": recipe.cxx, "nvcc": recipe.nvcc, "link": recipe.link}}
        (tmp / "build.json").write_text(json.dumps(info, indent=2))
        if final.is_dir() and not lib.is_file():
            shutil.rmtree(final, ignore_errors=True)  # a damaged entry (library deleted): replace it
        try:
            os.rename(tmp, final)
        except OSError:
            if not lib.is_file():  # not a lost race with another process: a real failure
                raise PluginUnavailable(f"cannot move the built plugin into {final}") from None
        return BuildResult(lib, True, recipe.with_cuda)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- loading (process-wide state: DALI cannot unload or re-register an operator) ---

_loaded: Optional[Path] = None
_failed: dict[str, str] = {}  # requested library (or "build") -> reason, so a failure is not retried


def _is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def load_plugin(path: Optional[str | Path] = None) -> Path:
    """Load (building first if needed) the plugin and check its CPU operator; returns the library's path.

    path: a prebuilt library; default $ALEXPIPE_DALI_PLUGIN, else the cached build.
    Raises PluginUnavailable with the reason; failures are remembered, not retried.
    """
    global _loaded
    requested = path if path is not None else os.environ.get("ALEXPIPE_DALI_PLUGIN") or None
    key = str(Path(requested).resolve()) if requested is not None else "build"
    if key in _failed:
        raise PluginUnavailable(_failed[key])
    try:
        lib = Path(requested).resolve() if requested is not None else build_plugin().path.resolve()
        if _loaded is not None and lib == _loaded:
            return _loaded
        if not lib.is_file():
            raise PluginUnavailable(f"no plugin library at {lib}")
        if _loaded is not None and _is_elf(lib):
            raise PluginUnavailable(f"{lib} not loaded: this process already holds {OP_NAME} from {_loaded}")
        from nvidia.dali import plugin_manager

        try:
            plugin_manager.load_library(str(lib))
        except RuntimeError as e:
            raise PluginUnavailable(f"cannot load {lib}: {str(e).strip().splitlines()[0]}") from None
        if not _operator_registered():
            raise PluginUnavailable(f"{lib} does not provide the {OP_NAME} operator")
        _loaded = lib
        _self_check(None)
        return lib
    except PluginUnavailable as e:
        _failed[key] = str(e)
        raise


def _operator_registered() -> bool:
    from nvidia.dali import backend

    return OP_NAME in backend.RegisteredCPUOps()


_gpu_checked: dict[int, Optional[str]] = {}  # device id -> None (works) or why not


def require_gpu_operator(device_id: int) -> None:
    """Check, once per device, that the loaded library has a working GPU operator (a library built
    without nvcc has none); raises PluginUnavailable otherwise. Call after `load_plugin`."""
    from nvidia.dali import backend

    if device_id not in _gpu_checked:
        reason = None
        if _loaded is None:
            reason = "no plugin library is loaded"
        elif OP_NAME not in backend.RegisteredGPUOps():
            reason = f"{_loaded} has no GPU operator (it was built without nvcc)"
        else:
            try:
                _self_check(device_id)
            except PluginUnavailable as e:
                reason = str(e)
        _gpu_checked[device_id] = reason
    if _gpu_checked[device_id] is not None:
        raise PluginUnavailable(_gpu_checked[device_id])


def _self_check(device_id: Optional[int]) -> None:
    """Run the operator once on a tiny batch against NumPy (CPU when device_id is None, else that GPU):
    a library that loads but computes something else (e.g. built against another DALI ABI) is
    caught here, not in a training run."""
    from nvidia.dali import fn, pipeline_def, types

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    alpha = rng.standard_normal((2, 3)).astype(np.float32) * 3
    matrix = rng.standard_normal((3, 3)).astype(np.float32) * 20
    where = "CPU" if device_id is None else f"GPU {device_id}"

    @pipeline_def(batch_size=2, num_threads=1, device_id=device_id, prefetch_queue_depth=1)
    def check():
        x = fn.external_source(source=lambda: images, batch=True, layout="HWC", dtype=types.UINT8)
        a = fn.external_source(source=lambda: alpha, batch=True, dtype=types.FLOAT)
        return getattr(fn, FN_NAME)(x if device_id is None else x.gpu(), a, matrix=matrix.ravel().tolist())

    try:
        pipe = check()
        pipe.build()
        (out,) = pipe.run()
        got = np.array((out if device_id is None else out.as_cpu()).as_tensor())
    except Exception as e:  # any DALI error here means the operator is unusable
        raise PluginUnavailable(f"{OP_NAME} ({where}) failed its self-check: "
                                f"{str(e).strip().splitlines()[0]}") from None
    delta = alpha.astype(np.float64) @ matrix.astype(np.float64).T
    want = np.clip(images + delta[:, None, None, :], 0, 255)
    if got.shape != want.shape or np.abs(got - want).max() > 1e-3:
        raise PluginUnavailable(f"{OP_NAME} ({where}) failed its self-check: results differ from NumPy")


__all__ = ["BuildResult", "FN_NAME", "OP_NAME", "PluginUnavailable", "build_plugin", "cache_root",
           "find_cuda_home", "load_plugin", "require_gpu_operator", "source_hash"]
