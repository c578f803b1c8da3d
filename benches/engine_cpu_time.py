#!/usr/bin/env python3
"""Inference only, per engine, round-robin: wall img/s and CPU ms per image (process
user + sys time; far less disturbed than wall time by other load on a shared machine).

    benches/engine_cpu_time.py DATA --model MODEL_DIR [--images 192] [--rounds 5]
        [--threads 2] [--batch-size 32] [--engines cpu:fp32,openvino:fp32,openvino:bf16]

Inputs: the first --images bench JPEGs, preprocessed beforehand (untimed). One warm-up
batch per session. ORT CPU sessions run with spinning off (as CPU time would otherwise
count idle spinning); OpenVINO uses its own TBB threads (INFERENCE_NUM_THREADS =
--threads). Prints the median over the rounds.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_score import ViTPreprocess, make_session, walk  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--engines", default="cpu:fp32,openvino:fp32,openvino:bf16")
    a = ap.parse_args()
    pre = ViTPreprocess(a.model)
    entries = walk(a.data)[: a.images]
    bs = a.batch_size
    batches = [np.stack([pre(a.data / rel) for rel, _ in entries[s : s + bs]])
               for s in range(0, len(entries), bs)]
    n = len(entries)
    engines = [tuple(e.split(":")) for e in a.engines.split(",")]
    sessions = {}
    for p, q in engines:
        s = make_session(a.model, a.threads, spin=False, provider=p, precision=q)
        inp = s.get_inputs()[0].name
        s.run(None, {inp: batches[0]})
        sessions[(p, q)] = (s, inp)
    wall = {e: [] for e in engines}
    cpu = {e: [] for e in engines}
    for _ in range(a.rounds):
        for e in engines:
            s, inp = sessions[e]
            t0, c0 = time.perf_counter(), time.process_time()
            for x in batches:
                s.run(None, {inp: x})
            wall[e].append(time.perf_counter() - t0)
            cpu[e].append(time.process_time() - c0)
    print(f"engine_cpu_time: {n} images, batch {bs}, {a.threads} threads, median of {a.rounds} rounds; "
          f"load average {open('/proc/loadavg').read().split()[:3]}")
    for e in engines:
        w, c = statistics.median(wall[e]), statistics.median(cpu[e])
        print(f"RESULT engine={e[0]}:{e[1]} images_per_s={n / w:.2f} cpu_ms_per_image={1e3 * c / n:.2f} "
              f"wall_spread={min(wall[e]):.2f}-{max(wall[e]):.2f}s")


if __name__ == "__main__":
    main()
