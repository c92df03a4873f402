"""`alexpipe convert` and `alexpipe info`.

Importing this module stays light (no torch, no numpy): `alexpipe --help`
must not pay seconds for libraries only the commands themselves use, so
everything heavy is imported inside the command functions.

Everything a user supplied, or a file on disk holds (paths, class names,
recorded provenance), is printed through `alexpipe.terminal.literal`; every
failure is one `error:` line (`alexpipe.terminal.fail`), never a traceback.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional

import typer

from alexpipe.atomic import WriteError, reason
from alexpipe.paths import GROWS, check_fits
from alexpipe.terminal import console, fail, literal, note

from .cache import cache_dir
from .source.download import OFFICIAL_MD5, OFFICIAL_URL
from .errors import DataError
from .sampling import seed_problem

INTERRUPTED = 130  # the shell's status for a process stopped by Ctrl-C


@contextlib.contextmanager
def _one_line_errors(interrupted: str) -> Iterator[None]:
    """Turn whatever a command raises into one `error:` line and an exit status.

    DataError is the expected kind, WriteError (a full disk, ...) and an
    OSError naming a file are the machine's; Ctrl-C exits 130 saying
    `interrupted`; anything else is a bug, still reported in one line
    (ALEXPIPE_DEBUG=1 re-raises it with its traceback).
    """
    try:
        yield
    except (DataError, WriteError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail(interrupted, INTERRUPTED)
    except MemoryError:
        fail("out of memory")
    except Exception as exc:  # noqa: BLE001 - the last line of defence against a traceback
        if isinstance(exc, (typer.Exit, typer.Abort)) or os.environ.get("ALEXPIPE_DEBUG"):
            raise
        if isinstance(exc, OSError) and exc.filename:  # the machine refused a file: not a bug
            fail(f"{exc.filename}: {reason(exc)}")
        fail(f"unexpected {type(exc).__name__}: {exc} — please report this "
             "(ALEXPIPE_DEBUG=1 shows where it happened)")


def _resolve_source(source: Optional[Path], use_download: bool, url: str, md5: str,
                    download_dir: Optional[Path]) -> Path:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from .convert.conversion import default_sources
    from .source.download import download

    if source is not None and use_download:
        fail("pass either --source or --download, not both")
    if source is not None:
        return source
    if use_download:
        err = console(stderr=True)
        with Progress(TextColumn("downloading"), BarColumn(), DownloadColumn(), console=err,
                      disable=not err.is_terminal) as bar:
            task = bar.add_task("download", total=None)
            return download(url, download_dir, md5,
                            on_bytes=lambda done, total: bar.update(task, completed=done, total=total))
    for place in default_sources():
        if place.exists():
            note(f"using {place} (no --source given)")
            return place
    fail("no CIFAR-10 found in the default places ($ALEXPIPE_CIFAR10, ./cifar-10-python.tar.gz, "
         f"./cifar-10-batches-py, {cache_dir()}/cifar-10-python.tar.gz); pass --source PATH or --download")


def convert_cmd(
    source: Optional[Path] = typer.Option(
        None, "--source", "-s",
        help="CIFAR-10 as you have it: cifar-10-python.tar.gz or cifar-10-binary.tar.gz, or either one "
             "extracted to a folder. Default: $ALEXPIPE_CIFAR10, then ./cifar-10-python.tar.gz, "
             "./cifar-10-batches-py, then the download cache."),
    out: Path = typer.Option(Path("data/cifar10"), "--out", "-o",
                             help="Folder to write train/val/test files into (created; must be empty, or an "
                                  "earlier conversion with --force)."),
    val_size: int = typer.Option(10_000, help="Images held out of the official train set as the val split "
                                              "(class-balanced, so a multiple of 10; 0 for none)."),
    seed: int = typer.Option(0, help="Seed choosing which train images go to the val split (non-negative)."),
    use_download: bool = typer.Option(False, "--download", help="Download the official python-version archive "
                                                                "(md5-checked) into --download-dir first."),
    url: str = typer.Option(OFFICIAL_URL, help="Where --download fetches from (a mirror, or file:// URL)."),
    md5: str = typer.Option(OFFICIAL_MD5, help="md5 the downloaded file must have."),
    download_dir: Optional[Path] = typer.Option(None, help="Where --download keeps the archive "
                                                           "[default: $XDG_CACHE_HOME/alexpipe or ~/.cache/alexpipe]."),
    allow_partial: bool = typer.Option(False, help="Accept batches with fewer than 10,000 images (subsets, tests)."),
    force: bool = typer.Option(False, help="Replace an earlier conversion in --out (only once the new one is "
                                           "complete; never a folder holding anything else)."),
    beton: Optional[bool] = typer.Option(None, "--beton/--no-beton",
                                         help="Also write FFCV .beton files. Default: when FFCV is installed."),
) -> None:
    """Convert CIFAR-10 once into memory-mappable safetensors files (+ FFCV .beton files)."""
    with _one_line_errors("interrupted: --out was left as it was and the temporary files were removed"):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from .format.beton import ffcv_present
        from .convert.conversion import convert, steps_for

        if seed_problem(seed):  # before a download
            fail(seed_problem(seed))
        if download_dir is not None:
            check_fits("--download-dir", download_dir, grows=GROWS)
        src = _resolve_source(source, use_download, url, md5, download_dir)
        err = console(stderr=True)
        # a progress bar only on a terminal: piped or logged, it is noise (and a stray blank line)
        with Progress(TextColumn("{task.description:<28}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=err, transient=True, disable=not err.is_terminal) as bar:
            total = steps_for(ffcv_present() if beton is None else beton)
            task = bar.add_task("converting", total=total)

            def step(what: str) -> None:
                bar.update(task, description=literal(what), advance=1)

            summary = convert(src, out, val_size=val_size, seed=seed, allow_partial=allow_partial,
                              force=force, betons=beton, step=step)
        _print_summary(summary)


def _print_summary(s) -> None:
    from rich.table import Table

    t = Table()
    for col in ("split", "images", "per class", "file"):
        t.add_column(col)
    for sp in s.splits:
        t.add_row(sp.name, f"{sp.num_images:,}", " ".join(map(str, sp.class_counts)), literal(sp.file))
    out = console()
    out.print(f"CIFAR-10 converted into {literal(s.out)} in {s.seconds:.1f} s")  # not a title: a long path wraps
    out.print(t)
    _print_stats(s.stats)
    src = s.source
    official = {True: "official md5", False: "md5 is NOT the official one", None: "folder: no archive md5"}
    out.print(f"source: {literal(src['kind'])} sha256 {literal(src['sha256'])} ({official[src['md5_official']]})")
    out.print(f"FFCV .beton files: {'written' if s.betons else 'not written'}")
    for n in s.notes:
        note(n)


def _print_stats(stats) -> None:
    """Mean/std and the PCA; each eigenvector printed as the column it is (v_i = column i of V)."""
    f = lambda xs: "(" + ", ".join(f"{x:.4f}" for x in xs) + ")"  # noqa: E731
    columns = [tuple(row[i] for row in stats.eigenvectors) for i in range(len(stats.eigenvalues))]
    out = console()
    out.print(f"train mean (0..255): {f(stats.mean)}   std: {f(stats.std)}")
    out.print(f"PCA eigenvalues: {f(stats.eigenvalues)}")
    out.print("PCA eigenvectors: " + "  ".join(f"v{i + 1} = {f(c)}" for i, c in enumerate(columns)))


def info_cmd(
    data: Path = typer.Argument(..., help="A folder written by `alexpipe convert`."),
    verify: bool = typer.Option(True, "--verify/--no-verify",
                                help="Re-read every file and check it against its recorded checksums "
                                     "(headers, metadata and the manifest are always checked)."),
) -> None:
    """Show what a converted folder holds and check its integrity."""
    with _one_line_errors("interrupted"):
        from .constants import SPLITS
        from .format.split import split_path
        from .format.integrity import read_manifest, recorded_splits, verify_dataset

        check_fits("DATA", data, grows=GROWS)
        if not data.is_dir():
            fail(f"{data} is not a folder written by `alexpipe convert`")
        manifest = read_manifest(data)
        listed = recorded_splits(manifest)
        # a split file the manifest does not list is a disagreement too: verify_dataset names it
        splits = listed + [s for s in SPLITS if s not in listed and split_path(data, s).exists()]
        _print_contents(data, manifest, listed)
        verify_dataset(data, splits, content=verify)
        console().print("integrity: ok" if verify else
                        "integrity: headers, metadata and manifest agree; contents not re-read (--no-verify)")


def _print_contents(data: Path, manifest: dict, splits: list[str]) -> None:
    """The table of splits and what the first readable one records; unreadable splits show `?`."""
    from rich.table import Table

    from .format.split import read_meta, split_path

    t = Table()
    for col in ("split", "images", "shape", "per class"):
        t.add_column(col)
    first = None
    for split in splits:
        try:
            header, meta = read_meta(split_path(data, split), inside=data)
        except DataError:
            t.add_row(split, "?", "?", "?")
            continue
        first = first or meta
        t.add_row(split, f"{meta.num_images:,}", str(header.tensors["images"].shape),
                  " ".join(map(str, meta.class_counts)))
    out = console()
    out.print(f"{literal(data)} (format {literal(manifest['format'])} v{manifest['format_version']})")
    out.print(t)
    if first is not None:
        out.print("classes: " + ", ".join(literal(c) for c in first.classes))
        _print_stats(first.stats)
        src = first.source
        out.print(f"source: {literal(src.get('kind'))} sha256 {literal(src.get('sha256'))} md5 {literal(src.get('md5'))} "
                  f"(official md5: {literal(src.get('md5_official'))}); val split: {first.val_size} images, "
                  f"seed {first.split_seed}")
    betons = sorted(n for n in manifest["files"] if n.endswith(".beton"))
    out.print("FFCV files: " + (", ".join(literal(b) for b in betons) if betons else "none"))


def register(app: typer.Typer) -> None:
    app.command("convert")(convert_cmd)
    app.command("info")(info_cmd)
