#!/usr/bin/env python3
"""Image benchmark: what background analysis costs at ingest, and listing and browsing with it.

Run as root from the repository root::

    python benchmarks/bench_images.py            # full size (about 15 minutes, 15 GB)
    python benchmarks/bench_images.py --quick    # smoke run (about a minute)
    python benchmarks/bench_images.py --json results.json

Everything lives in one temporary work directory (``--workdir``, default /tmp):
the generated images, the plain directory and two gffs stores with their mount
points, so everything writes to the same disk. The script always unmounts and
deletes the work directory, also on Ctrl-C or an error, and always exits 0: it
measures, it does not test. PASS/MISS only says whether a target is met. The
mount and file helpers are imported from bench_core.py. MB = 10^6 bytes.

1. Ingest with analysis ON vs OFF. Two fresh stores: "ON" with the defaults
   (``analyze_images`` is on) and "OFF" mounted with a config file holding
   ``[store] analyze_images = false``. The same source files are copied into
   a new flow of each with ``cp -r`` (source read once first, so it comes from
   the page cache; ``sync`` untimed before and after each step; OFF first).
   The source is generated once with Pillow: camera-like JPEGs (3000x2000,
   gradients, coloured low-frequency blobs and Gaussian noise of varying
   strength, quality 90, about 1.4-2.6 MB each, EXIF Make, Model and
   DateTimeOriginal set through ``Image.Exif``), all with distinct pixels.
   Analysis runs in the background after close(), so two figures are taken:
   (a) the cp time, until cp exits (what the user waits for) -> MB/s, ON vs
   OFF, target ON/OFF >= 0.8; (b) the time from the start of cp until every
   file of the ON flow has ``user.gf.image.width`` or ``user.gf.image.error``
   (getxattr polled, one file at a time, oldest pending first, every 10 ms
   while it is not ready), reported next to OFF's cp time (informational).
   When the team's real camera samples exist (``../shared/testdata/
   exif-samples`` next to the repository, or ``--samples DIR``), their image
   files (JPEG, TIFF, HEIC/HEIF) are copied flat into the work directory (never
   into the repository) and measured the same way as a second pair of rows.
   The CPU use of the machine and of each daemon during the cp and until the
   facts are ready is printed as notes: on a small machine the analysis
   competes with the ingest for CPU.
2. Listing with all xattrs: 10,000 distinct 8x8 PNGs (1,000 with --quick;
   analysis is per content, so identical files would be analysed once) are
   written untimed into a flow of the ON store, and the script waits until all
   have facts. The same bytes go into a plain directory, and each plain file
   gets the same user xattrs (names and values read from gffs) with
   ``os.setxattr``. Timed, like ``getfattr -d`` on every file: ``os.listdir``,
   then ``listxattr`` and ``getxattr`` of every name of every file. "Cold" is
   the first run after a remount of gffs, with the page cache dropped before
   each side; "warm" is the run right after it. The attribute counts of both
   sides are checked. Ratio gffs/plain, informational.

3. Browsing with thumbnails: N distinct camera-like JPEGs (N = 10,000, 300
   with --quick, or ``--browse N``) are written into a new flow of the ON
   store, untimed: the 3000x2000 JPEGs of step 1, each with a comment segment
   naming its number (distinct bytes, so each is analysed and thumbnailed on
   its own; 10,000 are about 15 GB and take about 10 minutes to analyse on two
   cores). The script waits until each has its ``x-large`` thumbnail. Then, after a
   remount and a page-cache drop each time, two timed passes over the flow:
   what a file manager does with thumbnails (``os.scandir``, ``stat``, then
   read ``.sh_thumbnails/large/<md5 of name>.png``), and what it does without
   them (``stat``, then read every original). Ratio thumbnails/originals; the
   daemon's ``user.gf.stats.file_block_loads`` after the thumbnail pass is
   printed (it must be 0: no original read).

The peak RSS (VmHWM) of each daemon is printed after every phase, as in
bench_core.py; VmHWM only grows, so the values show when the peak was reached.
The ON daemon is replaced by the remount before the listing.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import (MB, GffsMount, Results, Row, bench_parser, drop_caches, log,
                        new_results, print_table, read_tree, record_rss, run_benchmark)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SAMPLES = REPO.parent / "shared" / "testdata" / "exif-samples"
SAMPLE_EXTS = {".jpg", ".jpeg", ".tif", ".tiff", ".heic", ".heif", ".png", ".webp", ".avif"}
INGEST_TARGET = 0.8
READY_XATTRS = ("user.gf.image.width", "user.gf.image.error")
STALL_S = 120.0     # give up waiting for facts when none arrives for this long
POLL_S = 0.01


@dataclass(frozen=True)
class Sizes:
    n_jpeg: int
    n_png: int


    n_browse: int


FULL = Sizes(n_jpeg=80, n_png=10_000, n_browse=10_000)
QUICK = Sizes(n_jpeg=12, n_png=1000, n_browse=300)


@dataclass
class ImageResults(Results):
    details: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# mounts, CPU accounting


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])          # user nice system idle iowait irq softirq steal
    idle = fields[3] + fields[4]
    hz = os.sysconf("SC_CLK_TCK")
    return (total - idle) / hz, total / hz


def daemon_cpu(mount: GffsMount) -> float:
    """User + system CPU seconds of the mount's daemon so far (all its threads)."""
    pid = mount.pid()
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, TypeError):
        return float("nan")
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuWindow:
    """CPU used by the machine and by one daemon from creation until stop()."""

    def __init__(self, mount: GffsMount) -> None:
        self.mount = mount
        self.m0 = machine_cpu()
        self.d0 = daemon_cpu(mount)
        self.t0 = time.perf_counter()

    def stop(self) -> dict[str, float]:
        busy, _ = machine_cpu()
        wall = time.perf_counter() - self.t0
        return {"wall_s": round(wall, 3),
                "machine_busy_cores": round((busy - self.m0[0]) / wall, 2) if wall else 0.0,
                "daemon_cpu_s": round(daemon_cpu(self.mount) - self.d0, 2)}


# ---------------------------------------------------------------------------
# source files


def make_jpegs(directory: Path, count: int, log: Callable[[str], None]) -> int:
    """``count`` distinct camera-like 3000x2000 JPEGs with EXIF; returns total bytes."""
    import numpy as np
    from PIL import Image

    directory.mkdir(parents=True)
    rng = np.random.default_rng(2024)
    w, h, pad = 3000, 2000, 97
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    grad = np.stack([x / w * 120 + 20, y / h * 110 + 25, (x + y) / (w + h) * 90 + 35],
                    axis=-1).astype(np.int16)
    noise = rng.normal(0, 8, (h + pad, w + pad, 3)).astype(np.int16)
    cameras = [("Canon", "Canon EOS 80D"), ("NIKON CORPORATION", "NIKON D7500"),
               ("SONY", "ILCE-6400"), ("FUJIFILM", "X-T30")]
    total = 0
    for i in range(count):
        blobs = rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)
        lf = np.asarray(Image.fromarray(blobs).resize((w, h), Image.BICUBIC), dtype=np.int16)
        dy, dx = rng.integers(0, pad, 2)
        strength = int(rng.integers(5, 13))             # noise, hence file size, varies
        arr = grad + (lf >> 1) + ((noise[dy:dy + h, dx:dx + w] * strength) >> 3)
        np.clip(arr, 0, 255, out=arr)
        exif = Image.Exif()
        exif[0x010F], exif[0x0110] = cameras[i % len(cameras)]      # Make, Model
        exif.get_ifd(0x8769)[0x9003] = (                             # DateTimeOriginal
            f"2024:05:{1 + i // 40:02d} {8 + i % 10:02d}:{i % 60:02d}:{(7 * i) % 60:02d}")
        buf = io.BytesIO()
        Image.fromarray(arr.astype(np.uint8)).save(buf, "JPEG", quality=90, exif=exif)
        (directory / f"IMG_{i + 1:04d}.jpg").write_bytes(buf.getvalue())
        total += buf.tell()
        if (i + 1) % 20 == 0:
            log(f"  {i + 1}/{count} JPEGs")
    return total


def copy_samples(samples: Path, directory: Path) -> int:
    """Image files of the sample tree, copied flat (path joined with '__'); total bytes."""
    directory.mkdir(parents=True)
    total = 0
    for p in sorted(samples.rglob("*")):
        if p.is_file() and p.suffix.lower() in SAMPLE_EXTS:
            dest = directory / "__".join(p.relative_to(samples).parts)
            shutil.copyfile(p, dest)
            total += dest.stat().st_size
    return total


def jpeg_variant(base: bytes, i: int) -> bytes:
    """*base* with a comment segment naming *i*: same pixels, distinct bytes (its own content
    id, so analysed and thumbnailed on its own), made in microseconds."""
    text = f"gffs bench variant {i}".encode()
    return base[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + base[2:]


def thumbnail_path(path: str, size: str = "large") -> str:
    """Where the freedesktop spec has a file manager look for a shared thumbnail."""
    import hashlib
    from urllib.parse import quote

    directory, name = os.path.split(path)
    md5 = hashlib.md5(quote(name, safe="!$&'()*+,;=:@~").encode()).hexdigest()
    return os.path.join(directory, ".sh_thumbnails", size, md5 + ".png")


def browse(directory: Path, thumbnails: bool) -> tuple[float, int]:
    """A file manager opening a folder: stat every file, then read its thumbnail or itself."""
    t0 = time.perf_counter()
    n = 0
    for entry in os.scandir(directory):
        entry.stat()
        with open(thumbnail_path(entry.path) if thumbnails else entry.path, "rb") as f:
            n += len(f.read())
    return time.perf_counter() - t0, n


def browse_phase(on: GffsMount, work: Path, n: int, results: ImageResults,
                 log: Callable[[str], None]) -> None:
    log(f"4/4 browsing: writing {n} camera-like JPEGs (untimed), waiting for their thumbnails")
    bases = [p.read_bytes() for p in sorted((work / "src" / "jpeg").iterdir())]
    flow = on.path / "browse"
    flow.mkdir()
    total = 0
    for i in range(n):
        data = jpeg_variant(bases[i % len(bases)], i)
        (flow / f"IMG_{i:05d}.jpg").write_bytes(data)
        total += len(data)
    t0 = time.perf_counter()
    pending = deque(sorted(os.listdir(flow)))
    last = time.monotonic()
    while pending:
        if os.path.exists(thumbnail_path(str(flow / pending[0]), "x-large")):
            pending.popleft()
            last = time.monotonic()
        elif time.monotonic() - last > STALL_S:
            raise RuntimeError(f"{len(pending)} images got no thumbnail")
        else:
            time.sleep(POLL_S)
    ready = time.perf_counter() - t0
    results.notes.append(f"{n} browse JPEGs ({total / MB:.0f} MB): every thumbnail ready "
                         f"{ready:.1f} s after cp ({n / ready:.0f} images/s)")
    on.remount()
    drop_caches(results)
    t_thumbs, thumb_bytes = browse(flow, thumbnails=True)
    loads = int(os.getxattr(on.path, "user.gf.stats.file_block_loads"))
    on.remount()
    drop_caches(results)
    t_orig, orig_bytes = browse(flow, thumbnails=False)
    results.rows.append(Row(f"browse {n} JPEGs: thumbnails vs originals", "s", t_thumbs,
                            t_orig, False, "info"))
    results.notes.append(f"browse: read {thumb_bytes / MB:.1f} MB of large thumbnails vs "
                         f"{orig_bytes / MB:.1f} MB of originals; original blocks loaded "
                         f"while showing thumbnails: {loads}")
    results.details["browse"] = {"files": n, "bytes": total, "ready_s": round(ready, 2),
                                 "thumbs_s": t_thumbs, "originals_s": t_orig,
                                 "original_loads_during_thumbs": loads}
    record_rss(on, results, "ON after browsing")


def png_bytes(i: int) -> bytes:
    """A distinct 8x8 RGB PNG for every i < 2**24."""
    from PIL import Image

    im = Image.new("RGB", (8, 8), (i & 255, (i >> 8) & 255, (i >> 16) & 255))
    im.putpixel((i % 8, (i // 8) % 8), (255 - (i & 255), 128, 7))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------
# measurements


def has_facts(path: str) -> bool:
    for name in READY_XATTRS:
        try:
            os.getxattr(path, name)
            return True
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
    return False


def wait_for_facts(paths: list[str]) -> int:
    """Poll until every path has facts (oldest pending first); returns how many never got any."""
    pending = deque(paths)
    last_progress = time.monotonic()
    while pending:
        if has_facts(pending[0]):
            pending.popleft()
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > STALL_S:
            pending = deque(p for p in pending if not has_facts(p))
            return len(pending)
        else:
            time.sleep(POLL_S)
    return 0


def ingest(mount: GffsMount, src: Path, flow: str, wait: bool) -> dict[str, Any]:
    """cp -r SRC MNT/flow; with ``wait``, also until all files have facts."""
    read_tree(src)              # source in the page cache
    os.sync()
    dest = mount.path / flow
    cpu = CpuWindow(mount)
    t0 = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dest)], check=True)
    out: dict[str, Any] = {"cp_s": time.perf_counter() - t0, "cpu_cp": cpu.stop()}
    if wait:
        cpu = CpuWindow(mount)
        out["missing"] = wait_for_facts([str(dest / n) for n in sorted(os.listdir(src))])
        out["ready_s"] = time.perf_counter() - t0
        out["cpu_after_cp"] = cpu.stop()
    os.sync()                   # untimed
    return out


def getfattr_all(directory: Path) -> int:
    """Like ``getfattr -d`` on every file: listxattr, then getxattr of each name; attrs read."""
    n = 0
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        for attr in os.listxattr(path):
            os.getxattr(path, attr)
            n += 1
    return n


def timed_getfattr(directory: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = getfattr_all(directory)
    return time.perf_counter() - t0, n


# ---------------------------------------------------------------------------
# the benchmark


def ingest_pair(on: GffsMount, off: GffsMount, src: Path, total: int, n_files: int,
                label: str, flow: str, results: ImageResults, log: Callable[[str], None]) -> None:
    log(f"  OFF store: cp -r of {n_files} files ({total / MB:.0f} MB)")
    r_off = ingest(off, src, flow, wait=False)
    probe = off.path / flow / min(os.listdir(src))
    if has_facts(str(probe)):
        results.notes.append(f"{label}: the OFF store has image facts: analysis was not off")
    log("  ON store: cp -r, then wait until every file has facts")
    r_on = ingest(on, src, flow, wait=True)
    mb = total / MB
    results.rows.append(Row(f"{label}: ingest (cp), ON vs OFF", "MB/s", mb / r_on["cp_s"],
                            mb / r_off["cp_s"], True, f"ratio >= {INGEST_TARGET}"))
    results.rows.append(Row(f"{label}: facts ready vs OFF cp", "s", r_on["ready_s"],
                            r_off["cp_s"], False, "info"))
    if r_on["missing"]:
        results.notes.append(f"{label}: {r_on['missing']} files had no facts after "
                             f"{STALL_S:.0f} s without progress")
    c_off, c_on, c_after = r_off["cpu_cp"], r_on["cpu_cp"], r_on["cpu_after_cp"]
    results.notes.append(
        f"{label}: during cp the machine was busy {c_on['machine_busy_cores']:.2f} cores (ON) "
        f"vs {c_off['machine_busy_cores']:.2f} (OFF) of {os.cpu_count()}; daemon CPU "
        f"{c_on['daemon_cpu_s']:.2f} s (ON) vs {c_off['daemon_cpu_s']:.2f} s (OFF); facts "
        f"came {r_on['ready_s'] - r_on['cp_s']:.2f} s after cp exited, ON daemon CPU in that "
        f"time {c_after['daemon_cpu_s']:.2f} s")
    results.details[label] = {"files": n_files, "bytes": total, "on": r_on, "off": r_off}
    record_rss(on, results, f"ON after {label}")
    record_rss(off, results, f"OFF after {label}")


def run(work: Path, sizes: Sizes, samples: Path | None, results: ImageResults,
        log: Callable[[str], None]) -> None:
    log(f"generating {sizes.n_jpeg} camera-like JPEGs (3000x2000, quality 90)")
    jpeg_total = make_jpegs(work / "src" / "jpeg", sizes.n_jpeg, log)
    results.sizes["jpeg_total_bytes"] = jpeg_total
    sample_total = 0
    if samples is not None:
        sample_total = copy_samples(samples, work / "src" / "samples")
        n_samples = len(os.listdir(work / "src" / "samples"))
        results.sizes.update(sample_files=n_samples, sample_total_bytes=sample_total)
    else:
        results.notes.append("no exif-samples directory: real camera rows skipped")

    config = work / "off" / "gffs.toml"
    config.parent.mkdir()
    config.write_text("[store]\nanalyze_images = false\n")
    on = GffsMount(work / "on")
    off = GffsMount(work / "off", config)
    plain = work / "plain"
    plain.mkdir()
    try:
        on.mount()
        off.mount()

        log("1/4 ingest of the generated JPEGs, analysis ON vs OFF")
        ingest_pair(on, off, work / "src" / "jpeg", jpeg_total, sizes.n_jpeg,
                    f"{sizes.n_jpeg} JPEGs 3000x2000", "photos", results, log)
        if samples is not None and sample_total:
            log("2/4 ingest of the real camera samples, analysis ON vs OFF")
            ingest_pair(on, off, work / "src" / "samples", sample_total,
                        results.sizes["sample_files"],
                        f"{results.sizes['sample_files']} exif-samples", "samples", results, log)
        off.unmount()

        n = sizes.n_png
        log(f"3/4 writing {n} distinct 8x8 PNGs (untimed), waiting for their facts")
        flow = on.path / "pngs"
        flow.mkdir()
        (plain / "pngs").mkdir()
        names = [f"px{i:06d}.png" for i in range(n)]
        t0 = time.perf_counter()
        for i, name in enumerate(names):
            data = png_bytes(i)
            (flow / name).write_bytes(data)
            (plain / "pngs" / name).write_bytes(data)
        t_write = time.perf_counter() - t0
        missing = wait_for_facts([str(flow / name) for name in names])
        t_ready = time.perf_counter() - t0
        results.details["pngs"] = {"write_s": round(t_write, 2), "ready_s": round(t_ready, 2),
                                   "missing": missing}
        results.notes.append(f"{n} PNGs: written in {t_write:.1f} s, all facts "
                             f"{t_ready - t_write:.1f} s later "
                             f"({n / t_ready:.0f} files/s overall)")
        if missing:
            results.notes.append(f"{missing} PNGs had no facts after {STALL_S:.0f} s "
                                 "without progress")
        n_attrs = 0
        for name in names:        # the plain reference gets the same user xattrs
            src, dest = str(flow / name), str(plain / "pngs" / name)
            for attr in os.listxattr(src):
                os.setxattr(dest, attr, os.getxattr(src, attr))
                n_attrs += 1
        results.details["pngs"]["xattrs"] = n_attrs
        os.sync()
        record_rss(on, results, "ON after PNG facts")

        on.remount()
        drop_caches(results)
        g_cold, g_n = timed_getfattr(flow)
        g_warm, _ = timed_getfattr(flow)
        drop_caches(results)
        p_cold, p_n = timed_getfattr(plain / "pngs")
        p_warm, _ = timed_getfattr(plain / "pngs")
        if g_n != n_attrs or p_n != n_attrs:
            raise RuntimeError(f"listing read {g_n} (gffs) / {p_n} (plain) xattrs, "
                               f"expected {n_attrs}")
        per = f"{n_attrs / n:.1f}" if n else "0"
        results.rows.append(Row(f"getfattr -d of {n} PNGs ({per} attrs), cold", "s", g_cold,
                                p_cold, False, "info"))
        results.rows.append(Row(f"getfattr -d of {n} PNGs, warm", "s", g_warm, p_warm,
                                False, "info"))
        record_rss(on, results, "ON after listing (new daemon)")
        browse_phase(on, work, sizes.n_browse, results, log)
        on.unmount()
    finally:
        on.cleanup()
        off.cleanup()


def judge(rows: list[Row]) -> None:
    for r in rows:
        r.ratio = r.gffs / r.plain if r.plain else float("inf")
        if r.target.startswith("ratio >= "):
            r.passed = r.ratio >= float(r.target.split()[-1])


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__)
    p.add_argument("--samples", metavar="DIR", default=str(DEFAULT_SAMPLES),
                   help=f"real camera samples to measure too (default {DEFAULT_SAMPLES}; "
                        "skipped when missing)")
    p.add_argument("--no-samples", action="store_true", help="skip the real camera samples")
    p.add_argument("--browse", type=int, metavar="N", help="images in the browsing step")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.browse is not None:
        sizes = Sizes(sizes.n_jpeg, sizes.n_png, args.browse)
    samples = None if args.no_samples or not Path(args.samples).is_dir() else Path(args.samples)
    results = new_results(sizes, ImageResults)
    footer = ("reference: the analysis-OFF store (ingest: its MB/s; facts: its cp time), the "
              "plain directory (getfattr) or reading the originals (browse)")
    return run_benchmark(results, args, "gffs-bench-img-",
                         lambda work: run(work, sizes, samples, results, log), judge,
                         lambda r: print_table(r, reference="reference", name_width=44,
                                               footer=footer))


if __name__ == "__main__":
    sys.exit(main())
