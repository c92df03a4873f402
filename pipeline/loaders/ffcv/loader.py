"""The FFCV backend: an FFCV `Loader` over the split's `.beton`, the augmentation as FFCV Operations.

Pipelines (`jitter_on="cpu"`, the default off CUDA; all numba, `num_workers` threads):

    image  SimpleRGBImageDecoder -> TranslateFlip -> PCAJitterNormalise   train
           SimpleRGBImageDecoder -> TranslateFlip -> NormalizeImage       train, pca="off"
           SimpleRGBImageDecoder -> NormalizeImage                       val / test
    label  not decoded: the loader gathers them on the device by the epoch's order (base.py)

(plus ToTensor -> ToDevice when the target is not the CPU), then one copy into NCHW of the
requested dtype and memory format (a permute is all channels_last needs). The
copy is not optional: FFCV recycles its output buffers a few batches later.
Another dtype's cast is that copy; for float32 on the CPU it is a single-threaded NumPy copy, because a torch copy
wakes torch's thread pool on every batch to fight FFCV's numba threads for the
cores (4-6x slower end to end on this 2-core machine). FFCV's own
`NormalizeImage` is used where it has exactly the meaning (uint8 -> normalised
float32); translate/flip/jitter are this project's ops (ops/) because
FFCV's random transforms cannot be seeded per epoch.

`jitter_on="device"` (the default on CUDA): the image pipeline stops after
TranslateFlip -> ToTensor -> ToDevice, and the jitter + normalisation run on
the device as batched torch ops (augment/batched.py), with the alphas the CPU
op would read from the same table. It also runs on the CPU, which is how it is
tested without a GPU.

Order and epochs: FFCV's own orders would repeat samples across ranks (see
ops/order.py), so FFCV visits the shared epoch order (BaseLoader.order).
One FFCV Loader is built, and compiled, per FfcvLoader; each epoch sets FFCV's
epoch counter and refills the parameter tables that the compiled ops read
(ops/runtime.py), and nothing is recompiled. One epoch runs at a time:
starting an iteration closes any earlier one still running.

Randomness: the parameters are the epoch's table (the loader's Epoch,
drawn from (seed, epoch) alone), indexed by split position: identical (seed,
epoch) give identical batches whatever the thread count, and an image's
augmentation does not depend on the sharding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from ...augment import CROP, normalise_affine, pca_matrix
from ...augment.batched import DeviceStats, jitter_normalise
from ...format.beton import FFCV_INSTALL, beton_path, ffcv_works
from ...device import to_device
from ...errors import DataError
from ...format.split import Split
from ..base import BaseLoader, Epoch, LoaderConfig

JITTER_ON = ("auto", "cpu", "device")


def check_beton(path: Path, split: Split) -> None:
    """Fail with one actionable line unless `path` is a readable .beton holding exactly `split`.

    The backend relies on beton sample i being split position i (labels and
    augmentation parameters are looked up by it), so a stale copy must not
    load silently. Labels are compared in full; pixels are not
    (that would read the whole file).
    """
    if not ffcv_works():
        raise DataError(f"the ffcv backend needs FFCV, which is not importable here: {FFCV_INSTALL}, then run "
                        "`alexpipe convert` again to write the .beton files")
    if not path.exists():
        raise DataError(f"{path}: no such file; the ffcv backend reads the FFCV .beton files that `alexpipe "
                        f"convert` writes when FFCV is installed (this folder was converted without them, e.g. "
                        f"with --no-beton): run `alexpipe convert` again with FFCV installed")
    from ffcv.reader import Reader

    try:
        reader = Reader(str(path))
    except Exception as exc:  # FFCV raises assertion/value errors on foreign or truncated files
        raise DataError(f"{path}: not a readable FFCV .beton ({type(exc).__name__}: {exc}); "
                        f"run `alexpipe convert --force` to rewrite it") from None
    fields = list(reader.handlers)
    stale = f"{path}: does not match {split.path} ({{}}); run `alexpipe convert --force` to rewrite it"
    if sorted(fields) != ["image", "label"]:
        raise DataError(stale.format(f"fields {fields}, expected image and label"))
    if int(reader.num_samples) != len(split):
        raise DataError(stale.format(f"{int(reader.num_samples)} samples, the split has {len(split)}"))
    image_md = reader.metadata[f"f{fields.index('image')}"]
    if len(image_md) and (np.any(image_md["width"] != CROP) or np.any(image_md["height"] != CROP)):
        raise DataError(stale.format(f"images are not all {CROP}x{CROP}"))
    if not np.array_equal(reader.metadata[f"f{fields.index('label')}"], split.labels.numpy()):
        raise DataError(stale.format("labels differ"))


class FfcvLoader(BaseLoader):
    """See the module docstring; `jitter_on` chooses where steps 3-4 run: "cpu" (numba), "device" (torch)."""

    OPTIONS = ("jitter_on",)

    def __init__(self, cfg: LoaderConfig, split: Optional[Split] = None, jitter_on: str = "auto"):
        super().__init__(cfg, split)
        if jitter_on not in JITTER_ON:
            raise ValueError(f"jitter_on must be one of {', '.join(JITTER_ON)}, got {jitter_on!r}")
        self.on_device = jitter_on == "device" or (jitter_on == "auto" and cfg.device.type == "cuda")
        path = beton_path(cfg.root, cfg.split)
        check_beton(path, self.split)

        import numba
        from ffcv.loader import Loader

        from . import ops as ffcv_ops

        self._ops = ffcv_ops
        self.tables = ffcv_ops.ParamTables(len(self.split))
        self.stats = DeviceStats(self.split.meta.stats, cfg.pca, cfg.device) if self.on_device else None
        # numba refuses more threads than it started with (its default: the CPU count)
        self.threads = max(1, min(cfg.num_workers, numba.config.NUMBA_NUM_THREADS))
        self._live = None
        self._ffcv = Loader(
            str(path), batch_size=cfg.batch_size, num_workers=self.threads, os_cache=True,
            order=ffcv_ops.EpochOrder(self.order), indices=self.positions, seed=cfg.seed,
            pipelines={"image": self._image_pipeline(), "label": None},
            drop_last=cfg.drop_last,
        )

    def _image_pipeline(self) -> list:
        from ffcv.fields.decoders import SimpleRGBImageDecoder
        from ffcv.transforms import NormalizeImage, ToDevice, ToTensor

        c, ops, stats = self.cfg, self._ops, self.split.meta.stats
        pipeline = [SimpleRGBImageDecoder()]
        if c.augmented:
            pipeline.append(ops.TranslateFlip(self.tables.geometry))
        if self.on_device:
            return pipeline + [ToTensor(), ToDevice(c.device, non_blocking=True)]
        if c.jitter:
            scale, shift = normalise_affine(stats)
            pipeline.append(ops.PCAJitterNormalise(pca_matrix(stats, c.pca), scale, shift, self.tables.alpha))
        else:
            pipeline.append(NormalizeImage(np.asarray(stats.mean, np.float64), np.asarray(stats.std, np.float64),
                                           np.float32))
        if c.device.type != "cpu":
            pipeline += [ToTensor(), ToDevice(c.device, non_blocking=True)]
        return pipeline  # for the CPU, FFCV's own NumPy buffer: _finish copies out of it

    def _images(self, epoch: Epoch) -> Iterator[torch.Tensor]:
        self._stop(self._live)  # no FFCV thread may read the tables while they are refilled
        if epoch.params is not None:
            self.tables.fill(epoch.params)
        self._ffcv.next_epoch = epoch.number  # FFCV asks its traversal order (EpochOrder) for this epoch
        epoch_iter = self._live = iter(self._ffcv)
        try:
            # FFCV visits the order in sequence, so batch k holds the epoch's positions k * batch_size ...
            for k, (images,) in enumerate(epoch_iter):
                yield self._finish(images, epoch.positions(k))
        finally:
            self._stop(epoch_iter)

    def _finish(self, images, positions: np.ndarray) -> torch.Tensor:
        """FFCV's NHWC output (a NumPy buffer on the CPU path, else a torch tensor) -> NCHW images that are not
        FFCV's buffer, which it recycles a few batches later (the loader's cast to the requested dtype follows;
        for float32 that is no copy)."""
        c = self.cfg
        if isinstance(images, np.ndarray):
            if c.dtype != torch.float32:
                return torch.from_numpy(images).permute(0, 3, 1, 2)  # the cast to c.dtype is the copy
            # a single-threaded NumPy copy: a torch copy would wake torch's thread pool on every batch,
            # competing for the cores with FFCV's numba threads (several times slower on 2 cores)
            if c.channels_last:
                return torch.from_numpy(images.copy()).permute(0, 3, 1, 2)
            return torch.from_numpy(images.transpose(0, 3, 1, 2).copy(order="C"))
        x = images.permute(0, 3, 1, 2)
        if not self.on_device:
            return x.clone() if c.dtype == torch.float32 else x
        return jitter_normalise(x, self._alphas(positions) if c.jitter else None, self.stats)

    def _alphas(self, positions: np.ndarray) -> torch.Tensor:
        """The alphas of the images at `positions` for the device tail (those PCAJitterNormalise would read),
        sent asynchronously."""
        return to_device(torch.from_numpy(self.tables.alpha.array[positions]), self.cfg.device)

    def _stop(self, epoch_iter) -> None:
        """Close an FFCV epoch iterator and wait for its thread: its batches are no longer wanted, and the
        next epoch's tables must not change under it."""
        if epoch_iter is None:
            return
        epoch_iter.close()
        epoch_iter.join()
        if self._live is epoch_iter:
            self._live = None
