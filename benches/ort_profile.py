#!/usr/bin/env python3
"""Where ONNX Runtime spends its time in one or more models (not a test; a diagnostic).

Why it exists: the export benchmark (export_bench.py) says how fast a graph is; this
says why. It runs each model under ORT's built-in profiler (CPU provider, intra-op
threads = --threads, ORT_ENABLE_ALL, the settings export_bench.py uses) and prints
kernel time per run, summed by node with the layer number taken out ("layer7.mlp.fc1"
counts as "L.mlp.fc1"), so each row is one kind of step across all blocks, then the
same summed by operator. With several models the runs are round-robin (one run of
each per round), so that drift in the machine's speed hits all of them alike and
their per-operator times can be compared.

    /work/.venvs/bench/bin/python benches/ort_profile.py MODEL.onnx [MODEL2.onnx ...]
        [--batch 8] [--threads 2] [--runs 8] [--top 25]

Needs numpy and onnxruntime (the bench venv of benches/lib.sh has both).
"""
import argparse
import collections
import json
import os
import re
import tempfile

import numpy as np
import onnxruntime as ort


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def kernel_times(sess):
    """(per (op, step), per op) kernel microseconds, without the warm-up run: node
    events that start before the first `model_run` ends are dropped."""
    path = sess.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e["name"] == "model_run")
    warm_end = runs[0][1]
    per_step = collections.Counter()
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < warm_end:
            continue
        node = e["name"][: -len("_kernel_time")]
        step = re.sub(r"/[A-Za-z]+$", "", re.sub(r"layer\d+", "L", node))
        op = e["args"]["op_name"]
        per_step[(op, step)] += e["dur"]
        per_op[op] += e["dur"]
    return per_step, per_op, len(runs) - 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    sessions = [session(m, a.threads) for m in a.models]
    feeds = []
    for sess in sessions:
        inp = sess.get_inputs()[0]
        shape = [a.batch if not isinstance(d, int) else d for d in inp.shape]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        feeds.append({inp.name: x})
        sess.run(None, feeds[-1])  # warm-up (profiled; dropped in kernel_times)
    for _ in range(a.runs):
        for sess, feed in zip(sessions, feeds):
            sess.run(None, feed)
    for model, sess in zip(a.models, sessions):
        per_step, per_op, n = kernel_times(sess)
        total = sum(per_op.values())
        print(f"{model}: batch {a.batch}, {a.threads} threads; kernel time per run "
              f"{total / n / 1000:.1f} ms (mean of {n} runs)")
        for (op, step), us in per_step.most_common(a.top):
            print(f"  {op:22s} {step:42s} {us / n / 1000:8.2f} ms {100 * us / total:5.1f}%")
        print("by operator:")
        for op, us in per_op.most_common():
            print(f"  {op:22s} {us / n / 1000:8.2f} ms {100 * us / total:5.1f}%")


if __name__ == "__main__":
    main()
