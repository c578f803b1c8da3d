"""Single-thread decode + preprocess cost per image with Pillow + numpy, the way
transformers' ViTImageProcessor does it (exif_transpose, convert("RGB"), resize,
rescale, normalize, CHW). Peer of crates/vit-batch-preprocess/examples/prep_bench.rs.

    python benches/prep_peer.py DIR [SIDE] [REPEATS]
"""
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def main():
    root = Path(sys.argv[1])
    side = int(sys.argv[2]) if len(sys.argv) > 2 else 224
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    data = []
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        b = f.read_bytes()
        try:
            Image.open(io.BytesIO(b)).load()
        except Exception:
            continue  # deliberate error cases are not timed
        data.append(b)
    best = None
    for _ in range(repeats):
        t = time.perf_counter()
        td = tr = 0.0
        for b in data:
            t0 = time.perf_counter()
            im = Image.open(io.BytesIO(b))
            im = ImageOps.exif_transpose(im).convert("RGB")
            im.load()
            t1 = time.perf_counter()
            im = im.resize((side, side), Image.Resampling.BILINEAR)
            t2 = time.perf_counter()
            x = np.asarray(im).transpose(2, 0, 1).astype(np.float32)
            x *= 1 / 255
            x = (x - 0.5) / 0.5
            td += t1 - t0
            tr += t2 - t1
        s = time.perf_counter() - t
        if best is None or s < best[0]:
            best = (s, td, tr)
    n = len(data)
    s, td, tr = best
    print(
        f"RESULT tool=pillow images={n} ms_per_image={1e3 * s / n:.3f} decode_ms={1e3 * td / n:.3f} "
        f"resize_ms={1e3 * tr / n:.3f} tensor_ms={1e3 * (s - td - tr) / n:.3f}"
    )


if __name__ == "__main__":
    main()
