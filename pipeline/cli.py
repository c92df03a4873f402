"""`alexpipe convert` and `alexpipe info`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .convert import MANIFEST, convert, default_sources, steps_for
from .cache import cache_dir
from .download import OFFICIAL_MD5, OFFICIAL_URL, download
from .errors import DataError
from .fileformat import SPLITS, load_split, split_path, verify_split
from .hashing import file_hexdigests

console = Console(stderr=True)
out_console = Console()


def fail(message: str) -> None:
    """One clear line on stderr, exit status 1."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _resolve_source(source: Optional[Path], use_download: bool, url: str, md5: str,
                    download_dir: Optional[Path]) -> Path:
    if source is not None and use_download:
        fail("pass either --source or --download, not both")
    if source is not None:
        return source
    if use_download:
        with Progress(TextColumn("downloading"), BarColumn(), DownloadColumn(), console=console) as bar:
            task = bar.add_task("download", total=None)
            return download(url, download_dir, md5,
                            on_bytes=lambda done, total: bar.update(task, completed=done, total=total))
    for place in default_sources():
        if place.exists():
            console.print(f"using {place} (no --source given)")
            return place
    fail("no CIFAR-10 found in the default places ($ALEXPIPE_CIFAR10, ./cifar-10-python.tar.gz, "
         f"./cifar-10-batches-py, {cache_dir()}/cifar-10-python.tar.gz); pass --source PATH or --download")
    raise AssertionError  # unreachable


def convert_cmd(
    source: Optional[Path] = typer.Option(
        None, "--source", "-s",
        help="CIFAR-10 as you have it: cifar-10-python.tar.gz or cifar-10-binary.tar.gz, or either one "
             "extracted to a folder. Default: $ALEXPIPE_CIFAR10, then ./cifar-10-python.tar.gz, "
             "./cifar-10-batches-py, then the download cache."),
    out: Path = typer.Option(Path("data/cifar10"), "--out", "-o",
                             help="Folder to write train/val/test files into (created; must be empty unless --force)."),
    val_size: int = typer.Option(10_000, help="Images held out of the official train set as the val split "
                                              "(class-balanced, so a multiple of 10; 0 for none)."),
    seed: int = typer.Option(0, help="Seed choosing which train images go to the val split."),
    use_download: bool = typer.Option(False, "--download", help="Download the official python-version archive "
                                                                "(md5-checked) into --download-dir first."),
    url: str = typer.Option(OFFICIAL_URL, help="Where --download fetches from (a mirror, or file:// URL)."),
    md5: str = typer.Option(OFFICIAL_MD5, help="md5 the downloaded file must have."),
    download_dir: Optional[Path] = typer.Option(None, help="Where --download keeps the archive "
                                                           "[default: $XDG_CACHE_HOME/alexpipe or ~/.cache/alexpipe]."),
    allow_partial: bool = typer.Option(False, help="Accept batches with fewer than 10,000 images (subsets, tests)."),
    force: bool = typer.Option(False, help="Replace what --out already holds (only once the new data is complete)."),
    beton: Optional[bool] = typer.Option(None, "--beton/--no-beton",
                                         help="Also write FFCV .beton files. Default: when FFCV is installed."),
) -> None:
    """Convert CIFAR-10 once into memory-mappable safetensors files (+ FFCV .beton files)."""
    try:
        src = _resolve_source(source, use_download, url, md5, download_dir)
        with Progress(TextColumn("{task.description:<28}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            from .beton import ffcv_available

            total = steps_for(ffcv_available() if beton is None else beton)
            task = bar.add_task("converting", total=total)

            def step(what: str) -> None:
                bar.update(task, description=what, advance=1)

            summary = convert(src, out, val_size=val_size, seed=seed, allow_partial=allow_partial,
                              force=force, betons=beton, step=step)
    except DataError as exc:
        fail(str(exc))
    _print_summary(summary)


def _print_summary(s) -> None:
    t = Table(title=f"CIFAR-10 converted into {s.out} in {s.seconds:.1f} s")
    t.add_column("split")
    t.add_column("images", justify="right")
    t.add_column("per class")
    t.add_column("file")
    for sp in s.splits:
        t.add_row(sp.name, f"{sp.num_images:,}", " ".join(map(str, sp.class_counts)), sp.file)
    out_console.print(t)
    _print_stats(s.stats)
    src = s.source
    official = {True: "official md5", False: "md5 is NOT the official one", None: "folder: no archive md5"}
    out_console.print(f"source: {src['kind']} sha256 {src['sha256']} ({official[src['md5_official']]})")
    out_console.print(f"FFCV .beton files: {'written' if s.betons else 'not written'}")
    for note in s.notes:
        console.print(f"note: {note}")


def _print_stats(stats) -> None:
    f = lambda xs: "(" + ", ".join(f"{x:.4f}" for x in xs) + ")"  # noqa: E731
    out_console.print(f"train mean (0..255): {f(stats.mean)}   std: {f(stats.std)}")
    out_console.print(f"PCA eigenvalues: {f(stats.eigenvalues)}")
    out_console.print("PCA eigenvectors (columns): " + " ".join(f(r) for r in stats.eigenvectors))


def info_cmd(
    data: Path = typer.Argument(..., help="A folder written by `alexpipe convert`."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Re-hash every file against its recorded checksum."),
) -> None:
    """Show what a converted folder holds and check its integrity."""
    if not data.is_dir():
        fail(f"{data} is not a folder written by `alexpipe convert`")
    manifest_path = data / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        fail(f"{manifest_path} is missing or unreadable: not a folder written by `alexpipe convert`")
    t = Table(title=f"{data} (format {manifest['format']} v{manifest['format_version']})")
    for col in ("split", "images", "shape", "per class", "integrity"):
        t.add_column(col)
    problems: list[str] = []
    first = None
    for split in SPLITS:
        if not split_path(data, split).exists():
            continue
        try:
            s = load_split(data, split)
            first = first or s
            status = "not checked"
            if verify:
                verify_split(s)
                status = "ok"
        except DataError as exc:
            problems.append(str(exc))
            t.add_row(split, "?", "?", "?", "[red]FAILED[/]")
            continue
        t.add_row(split, f"{len(s):,}", str(tuple(s.images.shape)), " ".join(map(str, s.meta.class_counts)), status)
    for name, entry in manifest.get("files", {}).items():
        if "sha256" in entry:  # .beton files
            p = data / name
            if not p.exists():
                problems.append(f"{p}: listed in the manifest but missing")
            elif verify and file_hexdigests(p, "sha256")[0] != entry["sha256"]:
                problems.append(f"{p}: sha256 differs from the manifest (modified or corrupt)")
    out_console.print(t)
    if first is not None:
        out_console.print("classes: " + ", ".join(first.meta.classes))
        _print_stats(first.meta.stats)
        src = first.meta.source
        out_console.print(f"source: {src['kind']} sha256 {src['sha256']} md5 {src['md5']} "
                          f"(official md5: {src['md5_official']}); val split: {first.meta.val_size} images, "
                          f"seed {first.meta.split_seed}")
    betons = sorted(n for n in manifest.get("files", {}) if n.endswith(".beton"))
    out_console.print("FFCV files: " + (", ".join(betons) if betons else "none"))
    if problems:
        for p in problems:
            console.print(f"[bold red]error:[/] {p}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    if verify:
        out_console.print("integrity: ok")


def register(app: typer.Typer) -> None:
    app.command("convert")(convert_cmd)
    app.command("info")(info_cmd)
