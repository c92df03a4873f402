"""The DALI loader: an NVIDIA DALI pipeline fed from the memory-mapped split.

Per batch, an external source hands DALI the uint8 images in the order
`BaseLoader.order()` gives (so shuffling, sharding, drop_last and coverage are
those of every other backend). The pipeline then runs the steps of docs/design.md:

- translate (step 1): `fn.slice` at (dy - 4, dx - 4), 32x32, the outside padded with 0;
- PCA jitter (step 3): the project's own operator AlexpipePcaJitter (a native
  plugin, see build.py and plugin/ beside this file), or, where it cannot be
  built or loaded, the same maths from DALI built-ins (`builtin_pca_jitter`);
- flip and normalise (steps 2 and 4, and the layout of 5): one
  `fn.crop_mirror_normalize` (`mirror` = flip) to float32, CHW, or HWC, which
  `permute` turns into channels_last NCHW for free. Flipping after the jitter
  rather than before gives identical numbers (the jitter adds one delta to
  every pixel, so it commutes with any rearrangement of pixels) and saves a
  pass over the batch (about 15% of the pipeline's time on a CPU);
- the cast to the compute dtype (step 5) happens in torch (DALI has no bfloat16),
  on DALI's own output buffer handed over through DLPack (no copy before it).

The pipeline is built once and reset between epochs. dx, dy, flip and alpha
come through the external source too, from the epoch's parameter table
(the loader's `Epoch`: drawn on the host from (seed, epoch) alone), so an
epoch is reproducible and an image's augmentation does not depend on the rank.
DALI's own generators would not do: in a pipeline that lives across epochs
their state carries over, and a resumed run would not see what an
uninterrupted one saw.

On CUDA the images are copied to the GPU right after the external source and
every step runs there; the per-image parameters stay on the CPU, as DALI's
argument inputs do. Without CUDA the pipeline is CPU-only (`device_id=None`).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from ...augment import CROP, PAD, pca_matrix
from ...format.split import Split
from . import build as dali_build
from ..base import BaseLoader, Epoch, LoaderConfig

_warned: set[str] = set()


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"alexpipe: DALI plugin {dali_build.OP_NAME} unavailable ({reason}); "
                      "the dali loader uses DALI built-in operators for the PCA jitter instead",
                      RuntimeWarning, stacklevel=3)


def resolve_jitter(use_plugin: bool, plugin_path: Optional[str] = None,
                   device_id: Optional[int] = None) -> Optional[str]:
    """None when the plugin's operator is ready to use (on GPU `device_id` too, if given), else why not.

    Failures are warned once per reason; use_plugin=False is a choice, not a failure, so it is silent.
    """
    if not use_plugin:
        return "use_plugin=False"
    try:
        dali_build.load_plugin(plugin_path)
        if device_id is not None:
            dali_build.require_gpu_operator(device_id)
        return None
    except dali_build.PluginUnavailable as e:
        _warn_once(str(e))
        return str(e)


def plugin_pca_jitter(images: Any, alpha: Any, matrix: np.ndarray) -> Any:
    """Step 3 with the project's operator: uint8 HWC -> float32 clamp(x + M @ alpha, 0, 255)."""
    from nvidia.dali import fn

    return getattr(fn, dali_build.FN_NAME)(images, alpha, matrix=[float(v) for v in matrix.ravel()])


def builtin_pca_jitter(images: Any, alpha: Any, matrix: np.ndarray, gpu: bool) -> Any:
    """Step 3 from DALI built-ins, the same maths as the plugin: delta = M @ alpha
    (`coord_transform` is a matrix-vector product), broadcast over H and W, then clamp."""
    from nvidia.dali import fn, math, types

    delta = fn.coord_transform(fn.reshape(alpha, shape=[1, 3]), M=[float(v) for v in matrix.ravel()],
                               dtype=types.FLOAT)
    delta = fn.reshape(delta, shape=[1, 1, 3])
    if gpu:
        delta = delta.gpu()
    return math.clamp(images + delta, 0.0, 255.0)


class DaliLoader(BaseLoader):
    """See the module docstring. use_plugin=False forces the built-in composition for step 3;
    plugin_path loads that prebuilt library instead of the cached build."""

    OPTIONS = ("use_plugin", "plugin_path")

    def __init__(self, cfg: LoaderConfig, split: Optional[Split] = None, use_plugin: bool = True,
                 plugin_path: Optional[str] = None):
        super().__init__(cfg, split)
        import nvidia.dali  # noqa: F401  (fail here, with DALI's own message, if it is not installed)

        if cfg.device.type not in ("cpu", "cuda"):
            raise ValueError(f"the dali backend runs on cpu or cuda, not {cfg.device.type}")
        self.gpu = cfg.device.type == "cuda"
        self.device_id = None
        if self.gpu:
            self.device_id = cfg.device.index if cfg.device.index is not None else torch.cuda.current_device()
        self.images = self.split.images.numpy()  # the memory map itself: batches are gathered from it
        self._pipe: Any = None
        self._finished = False  # whether the last epoch ran to its end (then the pipeline is only reset)
        self._feed: Optional[Epoch] = None  # the epoch being fed
        stats = self.split.meta.stats
        self.mean = [float(v) for v in stats.mean]
        self.std = [float(v) for v in stats.std]
        self.matrix = pca_matrix(stats, cfg.pca) if cfg.jitter else None
        # why the plugin is not used (None: it is); only asked when there is a jitter to run
        self.fallback_reason = resolve_jitter(use_plugin, plugin_path, self.device_id) if cfg.jitter else None
        self.uses_plugin = cfg.jitter and self.fallback_reason is None

    # --- the pipeline ---

    def _source(self) -> Callable:
        """External-source callback: batch k of the current epoch, images plus (when augmenting) parameters."""
        c = self.cfg

        def source(info: Any) -> Any:
            epoch = self._feed
            k = info.iteration
            if k >= len(epoch):
                raise StopIteration
            idx = epoch.positions(k)
            images = self.images[idx]
            if epoch.params is None:
                return images
            p = epoch.params.take(idx)
            offsets = np.stack([p.dy, p.dx], axis=1).astype(np.int32)
            return images, offsets, p.flip.astype(np.int32), np.ascontiguousarray(p.alpha, dtype=np.float32)

        return source

    def _graph(self, source: Callable) -> Any:
        from nvidia.dali import fn, types

        c = self.cfg
        if c.augmented:
            images, offsets, flips, alpha = fn.external_source(
                source=source, num_outputs=4, batch=True, batch_info=True,
                layout=["HWC", "", "", ""], dtype=[types.UINT8, types.INT32, types.INT32, types.FLOAT])
        else:
            images = fn.external_source(source=source, batch=True, batch_info=True, layout="HWC",
                                        dtype=types.UINT8)
        x = images.gpu() if self.gpu else images
        if c.augmented:
            # offsets are (dy, dx) into the zero-padded image: start PAD earlier in the unpadded one
            x = fn.slice(x, start=offsets - PAD, shape=[CROP, CROP], axis_names="HW",
                         out_of_bounds_policy="pad", fill_values=0)
            if c.jitter:
                x = (plugin_pca_jitter(x, alpha, self.matrix) if self.uses_plugin
                     else builtin_pca_jitter(x, alpha, self.matrix, self.gpu))
        # the flip is crop_mirror_normalize's `mirror`: one pass fewer than fn.flip, and exactly the same
        # result, since the jitter adds the same delta to every pixel (it commutes with any permutation)
        mirror = {"mirror": flips} if c.augmented else {}
        return fn.crop_mirror_normalize(x, mean=self.mean, std=self.std, dtype=types.FLOAT,
                                        output_layout="HWC" if c.channels_last else "CHW", **mirror)

    def _pipeline(self) -> Any:
        """The pipeline, built once: a finished epoch only resets it; an abandoned one (its prefetched
        batches would leak into the next epoch) has it rebuilt."""
        from nvidia.dali import Pipeline

        if self._pipe is not None and self._finished:
            try:
                self._pipe.run()  # past the end: DALI answers StopIteration and can then be reset
            except StopIteration:
                self._pipe.reset()
                return self._pipe
        c = self.cfg
        # exec_dynamic: outputs are reference-counted, so torch may keep a view of them (no copy)
        pipe = Pipeline(batch_size=c.batch_size, num_threads=max(1, c.num_workers), device_id=self.device_id,
                        seed=c.seed, prefetch_queue_depth=2, exec_dynamic=True)
        with pipe:
            pipe.set_outputs(self._graph(self._source()))
        pipe.build()
        self._pipe = pipe
        return pipe

    def _to_torch(self, out: Any) -> torch.Tensor:
        """DALI's output as an NCHW torch tensor through DLPack: no copy (on CUDA, torch's stream waits for
        DALI's, without the host waiting); the loader's cast to the compute dtype is the one pass over it. The
        dynamic executor hands each output over for good, so torch may keep the buffer itself."""
        t = torch.from_dlpack(out.as_tensor())
        return t.permute(0, 3, 1, 2) if self.cfg.channels_last else t  # NHWC viewed as NCHW is channels_last

    def _images(self, epoch: Epoch) -> Iterator[torch.Tensor]:
        batches = len(epoch)
        if batches == 0:
            return
        self._feed = epoch
        pipe = self._pipeline()
        self._finished = False
        for k in range(batches):
            (out,) = pipe.run()
            if k == batches - 1:
                self._finished = True
            yield self._to_torch(out)
