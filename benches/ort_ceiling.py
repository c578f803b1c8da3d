#!/usr/bin/env python3
"""The ceiling: ONNX Runtime alone on pre-made tensors.

Preprocesses every image first (untimed, same code as peer_score.py), builds the
batches, runs one warm-up batch (untimed), then times only session.run over all
batches (with intra-op spinning on and off, the faster reported). No decoding, no softmax, no output writing: what a scorer would reach if
everything but inference were free, with the same session settings as the peer
(CPU, intra_op_num_threads = --threads, inter-op 1, ORT_ENABLE_ALL, sequential).

Prints `ort_ceiling: ... img/s` and
`RESULT tool=ceiling images=N seconds=S images_per_s=R`.
Holds all tensors in memory (N * 3 * H * W * 4 bytes: 600 at 224 -> 361 MB), so its
peak RSS is not comparable to the scorers'.

    /work/.venvs/bench/bin/python benches/ort_ceiling.py DATA --model MODEL_DIR --threads 2 --batch-size 32
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_score import ViTPreprocess, make_session, walk  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="timed passes over all batches (best is reported)")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--spin", choices=["on", "off", "best"], default="best",
                    help="ORT intra-op spinning: on (ORT's default), off (as vit-batch), or best of both (default)")
    ap.add_argument("--provider", choices=["cpu", "openvino"], default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    a = ap.parse_args()

    pre = ViTPreprocess(a.model)
    entries = walk(a.data)
    if not entries:
        sys.exit(f"no images under {a.data}")
    t = time.perf_counter()
    bs = a.batch_size
    batches = [np.stack([pre(a.data / rel) for rel, _ in entries[s : s + bs]])
               for s in range(0, len(entries), bs)]
    prep_s = time.perf_counter() - t
    n = len(entries)
    spins = {"on": [True], "off": [False], "best": [True, False]}[a.spin]
    best, best_spin = None, None
    for spin in spins:
        sess = make_session(a.model, a.threads, spin=spin, provider=a.provider, precision=a.precision)
        inp = sess.get_inputs()[0].name
        if not a.no_warmup:
            sess.run(None, {inp: batches[0]})
        mine = None
        for _ in range(max(1, a.repeats)):
            t0 = time.perf_counter()
            for x in batches:
                sess.run(None, {inp: x})
            dt = time.perf_counter() - t0
            mine = dt if mine is None else min(mine, dt)
        print(f"ort_ceiling: spinning {'on ' if spin else 'off'}: {n / mine:.1f} img/s ({mine:.2f}s)")
        if best is None or mine < best:
            best, best_spin = mine, spin
        del sess
    print(f"ort_ceiling: {n} images, session.run only: {best:.2f}s, {n / best:.1f} img/s "
          f"(spinning {'on' if best_spin else 'off'}; {a.threads} threads, batch {bs}; {a.provider} {a.precision}; "
          f"preprocessing beforehand took {prep_s:.1f}s, untimed)")
    print(f"RESULT tool=ceiling images={n} seconds={best:.4f} images_per_s={n / best:.3f}")


if __name__ == "__main__":
    main()
