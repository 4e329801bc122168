#!/usr/bin/env python3
"""Thumbnail size budget: stored thumbnail bytes next to the originals, and what serving costs.

Run from the repository root (no mount, no root needed)::

    python benchmarks/bench_thumbnails.py              # 20 camera-size JPEGs + the samples
    python benchmarks/bench_thumbnails.py --photos 5 --samples DIR

For each image the analysis' thumbnails are made as the mount makes them
(``analyze_image`` at 512 px, ``make_thumbnails``). Printed per set: the
originals' bytes, what gffs stores (one WebP source per image,
gffs.images.thumbsource), what the three PNGs would take if stored as they are
served (the layout before sources), both as a share of the originals (target:
stored < 10 %), and the time to render each size's PNG from the source (what
a ``.sh_thumbnails`` open or a listing's cache write costs on a miss of the
daemon's PNG cache). Camera-size JPEGs come from bench_images.make_jpegs
(3000x2000, noise, quality 90; needs numpy). Exits 0; MISS/PASS says whether
the budget holds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_images import DEFAULT_SAMPLES, SAMPLE_EXTS, make_jpegs  # noqa: E402

from gffs.images.analyze import analyze_image  # noqa: E402
from gffs.images.thumbnails import LARGEST, make_thumbnails  # noqa: E402
from gffs.images.thumbsource import render  # noqa: E402

BUDGET = 0.10


def measure(name: str, files: list[Path]) -> None:
    originals = stored = pngs = 0
    render_s: dict[str, list[float]] = {}
    for path in files:
        data = path.read_bytes()
        facts, pixels = analyze_image(data, keep_pixels=LARGEST)
        thumbs = make_thumbnails(pixels, facts, len(data)) if pixels is not None else []
        if not thumbs:
            continue
        originals += len(data)
        stored += len(thumbs[0].source)
        pngs += sum(len(t.png) for t in thumbs)
        for t in thumbs:
            t0 = time.perf_counter()
            render(t.source, t.width, t.height)
            render_s.setdefault(t.size, []).append(time.perf_counter() - t0)
    if not originals:
        print(f"{name}: no images")
        return
    verdict = "PASS" if stored / originals < BUDGET else "MISS"
    print(f"{name}: {len(files)} files, originals {originals / 1e6:.1f} MB")
    print(f"  stored (WebP source)  {stored / 1e6:8.2f} MB  {stored / originals:6.1%}  "
          f"{verdict} (< {BUDGET:.0%})")
    print(f"  three PNGs as served  {pngs / 1e6:8.2f} MB  {pngs / originals:6.1%}  (the old layout)")
    for size, times in render_s.items():
        print(f"  render {size:8s} mean {1000 * sum(times) / len(times):5.1f} ms, "
              f"max {1000 * max(times):5.1f} ms")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=int, default=20, help="camera-size JPEGs to generate")
    p.add_argument("--samples", default=str(DEFAULT_SAMPLES), help="real camera samples")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="gffs-bench-thumbs-") as work:
        jpegs = Path(work) / "jpeg"
        make_jpegs(jpegs, args.photos, lambda _msg: None)
        measure("camera-like JPEGs 3000x2000", sorted(jpegs.iterdir()))
    samples = Path(args.samples)
    if samples.is_dir():
        measure("exif-samples", sorted(q for q in samples.rglob("*")
                                       if q.is_file() and q.suffix.lower() in SAMPLE_EXTS))
    else:
        print(f"no samples at {samples}: skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
