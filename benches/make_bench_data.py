#!/usr/bin/env python3
"""Make a realistic JPEG ImageFolder for the scoring benchmarks.

Every image is derived from the real photos in fixtures/photos/ (licences in
fixtures/photos/LICENSES.md: CC0 / public domain, from scikit-image's sample data)
by a random crop, a rescale to the target size, an optional horizontal flip, mild
colour jitter (brightness / contrast / saturation within +-12%) and a JPEG re-encode
at quality 80-95 (4:2:0, baseline; a few progressive).

Sizes (landscape, ~1 in 6 portrait): ~85% about 500x375, ~10% about 1024x768,
~5% about 1600x1200 (each jittered by a few pixels so not every file is alike).

Layout: <out>/class_00 .. class_{C-1}/<i:06d>.jpg, image i in class i % C.
Deterministic: image i depends only on (--seed, i) and the source photos, so the
first 600 images of a --count 6000 set are byte-identical to a --count 600 set
(same Pillow / libjpeg-turbo).

    /work/.venvs/bench/bin/python benches/make_bench_data.py --out /tmp/bench-data-600 --count 600
"""

import argparse
import hashlib
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO / "fixtures" / "photos"
# The colour photos big enough to crop from (the tiny rocket and the odd-mode files
# are left out: they are test fixtures for decoding, not typical dataset content).
SOURCES = [
    "coffee_500x375.jpg",
    "chelsea_451x300.jpg",
    "retina_1024x768.jpg",
    "astronaut_progressive.jpg",
    "rocket_exif6.jpg",
    "camera_gray_512.jpg",
]
SIZES = [((500, 375), 0.85), ((1024, 768), 0.10), ((1600, 1200), 0.05)]

_sources = None


def load_sources():
    global _sources
    if _sources is None:
        _sources = []
        for name in SOURCES:
            im = Image.open(PHOTOS / name)
            im = ImageOps.exif_transpose(im).convert("RGB")
            _sources.append(im)
    return _sources


def make_one(args):
    seed, i, classes, out = args
    rng = np.random.default_rng([seed, i])
    srcs = load_sources()
    src = srcs[int(rng.integers(len(srcs)))]
    r = rng.random()
    acc = 0.0
    for (tw, th), p in SIZES:
        acc += p
        if r < acc:
            break
    tw += int(rng.integers(-8, 9))
    th += int(rng.integers(-6, 7))
    if rng.random() < 1 / 6:
        tw, th = th, tw  # portrait
    # Random crop: 45-100% of the source's area, aspect near the target's.
    sw, sh = src.size
    aspect = (tw / th) * float(np.exp(rng.uniform(-0.1, 0.1)))
    area = sw * sh * rng.uniform(0.45, 1.0)
    cw = int(round(np.sqrt(area * aspect)))
    ch = int(round(np.sqrt(area / aspect)))
    cw, ch = max(16, min(cw, sw)), max(16, min(ch, sh))
    x0 = int(rng.integers(0, sw - cw + 1))
    y0 = int(rng.integers(0, sh - ch + 1))
    im = src.crop((x0, y0, x0 + cw, y0 + ch))
    resample = [Image.Resampling.LANCZOS, Image.Resampling.BICUBIC, Image.Resampling.BILINEAR][
        int(rng.integers(3))
    ]
    im = im.resize((tw, th), resample)
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.88, 1.12))
    im = ImageEnhance.Contrast(im).enhance(rng.uniform(0.88, 1.12))
    im = ImageEnhance.Color(im).enhance(rng.uniform(0.88, 1.12))
    q = int(rng.integers(80, 96))
    progressive = bool(rng.random() < 0.1)
    cls = f"class_{i % classes:02d}"
    path = Path(out) / cls / f"{i:06d}.jpg"
    im.save(path, "JPEG", quality=q, subsampling=2, progressive=progressive, optimize=False)
    return path.stat().st_size, (tw, th)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--count", type=int, default=int(os.environ.get("BENCH_IMAGES", 600)))
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    a = ap.parse_args()
    if a.count < 1 or a.classes < 1:
        sys.exit("--count and --classes must be >= 1")
    if a.out.exists() and any(a.out.iterdir()):
        if not a.overwrite:
            sys.exit(f"{a.out} exists and is not empty; pass --overwrite")
        shutil.rmtree(a.out)
    for c in range(a.classes):
        (a.out / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    work = [(a.seed, i, a.classes, str(a.out)) for i in range(a.count)]
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs) as ex:
            res = list(ex.map(make_one, work, chunksize=16))
    else:
        res = [make_one(w) for w in work]
    total = sum(b for b, _ in res)
    big = sum(1 for _, (w, h) in res if max(w, h) > 1300)
    mid = sum(1 for _, (w, h) in res if 700 < max(w, h) <= 1300)
    # Fingerprint of names + bytes, to compare two machines' sets.
    h = hashlib.sha256()
    for p in sorted(a.out.rglob("*.jpg")):
        h.update(str(p.relative_to(a.out)).encode())
        h.update(p.read_bytes())
    print(
        f"make_bench_data: {a.count} JPEGs in {a.classes} classes -> {a.out} "
        f"({total / 1e6:.1f} MB, {a.count - big - mid} ~500x375, {mid} ~1024x768, {big} ~1600x1200; "
        f"sha256 {h.hexdigest()[:16]}; {time.time() - t0:.1f}s)"
    )


if __name__ == "__main__":
    main()
