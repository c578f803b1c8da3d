#!/usr/bin/env python3
"""Benchmark `vit-batch export` (not a test; results go into BENCHMARKS.md, ## Export).

Why it exists: the exporter promises (a) exporting ViT-B/16 takes little time and
peak memory below 2x the weights, and (b) its graphs run at least as fast on ONNX
Runtime as the graph `torch.onnx.export` writes for the same model and weights, with
logits within 1e-4. This script measures both on the current machine.

Needs the torch venv (torch, transformers, onnxruntime 1.31.1, onnxscript); see
scripts/fixtures/make_hf_parity.py. It builds the exporter example itself. Run:
    /work/.venvs/torch/bin/python benches/export_bench.py [--work /tmp/vit-export-bench]
        [--models ti,s] [--batch 8,32] [--threads 2] [--runs 10]

1. Export time + peak RSS (/usr/bin/time -v of the export process) of
   vit-base-patch16-224, random init (preset), for both variants; then the same
   architecture exported from an HF checkpoint folder (memory-mapped weights).
2. For ViT-Ti/16 and ViT-S/16 at 224: a random-init HF ViTForImageClassification
   (1000 classes) is saved with save_pretrained; torch.onnx.export writes its two
   graphs (opset 18, dynamic batch): TorchScript, as `optimum-cli export onnx` calls
   it (the baseline), and dynamo; our exporter writes Standard and Fused graphs from the
   same folder. Each graph runs in ONNX Runtime (CPU, intra-op threads = --threads,
   graph optimisation ORT_ENABLE_ALL, i.e. what ORT does by default) on the same
   batch (each size in --batch: 8, and 32 = `vit-batch score`'s default),
   round-robin (one run of each graph per round, --runs rounds, after 2 warm-ups) so
   that other load on a shared machine hits all graphs alike; we report images/s from
   the median and from the best run, and the max-abs logits difference against
   PyTorch's eager forward. A second round-robin pass with ORT's thread
   spinning off reports CPU milliseconds per image (process CPU time, all threads),
   which other processes on a shared 2-core machine disturb far less than wall time.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
EXPORTER = None  # set by build_exporter()


def build_exporter():
    """`cargo build --release --example export`; the binary's path from cargo itself
    (so whatever target dir cargo uses, the benchmark runs the current code)."""
    global EXPORTER
    out = subprocess.run(["cargo", "build", "--release", "--example", "export",
                          "--message-format=json-render-diagnostics"], cwd=ROOT, check=True,
                         capture_output=True, text=True)
    for line in out.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") and \
                msg["target"]["name"] == "export":
            EXPORTER = msg["executable"]
    if not EXPORTER:
        sys.exit("export_bench: cargo did not report the example binary")
    print(f"exporter: {EXPORTER}", file=sys.stderr)

SIZES = {  # name: (hidden, layers, heads)
    "ti": ("ViT-Ti/16", 192, 12, 3),
    "s": ("ViT-S/16", 384, 12, 6),
    "b": ("ViT-B/16", 768, 12, 12),
}


def run_export(args):
    """Run the exporter under /usr/bin/time -v; its peak RSS is the one we report.

    (getrusage inside the child is not used for the report: Linux keeps ru_maxrss
    across fork+exec, so a child of this Python process, which has torch loaded,
    would report Python's own peak.)"""
    out = subprocess.run(["/usr/bin/time", "-v", EXPORTER] + args, check=True,
                         capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    for line in out.stderr.splitlines():
        if "Maximum resident set size" in line:
            r["peak_rss_bytes"] = int(line.split(":")[1]) * 1024
    return r


def make_session(path, threads, spinning=True):
    import onnxruntime as ort
    so = ort.SessionOptions()
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t0 = time.perf_counter()
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return sess, time.perf_counter() - t0


def bench_interleaved(paths, x, threads, runs, spinning=True):
    """Time every graph round-robin (one run each per round), so that other load on
    the machine hits all graphs alike. Returns {label: (logits, median s, min s, load s,
    median CPU s)}; CPU time is the whole process's (all ORT threads), meaningful with
    spinning off (spinning threads burn CPU while idle)."""
    sessions = {k: make_session(p, threads, spinning) for k, p in paths.items()}
    feed = {"pixel_values": x}
    logits = {}
    for k, (sess, _) in sessions.items():
        for _ in range(2):
            logits[k] = sess.run(["logits"], feed)[0]
    times = {k: [] for k in paths}
    cpu = {k: [] for k in paths}
    for _ in range(runs):
        for k, (sess, _) in sessions.items():
            t, c = time.perf_counter(), time.process_time()
            sess.run(["logits"], feed)
            times[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    return {k: (logits[k], statistics.median(times[k]), min(times[k]), sessions[k][1],
                statistics.median(cpu[k])) for k in paths}


# The two graphs torch.onnx.export writes for the model. The first is the baseline the
# speed-ups are taken against: it is what `optimum-cli export onnx` writes (optimum's
# export_pytorch calls torch.onnx.export with dynamo=False, dynamic_axes and constant
# folding unless asked for dynamo), and ORT runs it a little faster than the second.
# The second is what a bare torch.onnx.export(model, args, f) writes since torch 2.9.
TORCH_GRAPHS = [("torch.onnx.export (TorchScript, as optimum)", "torchscript"),
                ("torch.onnx.export (dynamo)", "dynamo")]


def export_torch(torch, model, x, path, kind):
    """One torch.onnx.export graph (opset 18, dynamic batch) of `model` at `path`."""
    common = dict(input_names=["pixel_values"], output_names=["logits"], opset_version=18)
    if kind == "torchscript":
        torch.onnx.export(model, (x,), path, dynamo=False, do_constant_folding=True,
                          dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
                          **common)
    else:
        torch.onnx.export(model, (x,), path, dynamo=True, external_data=False,
                          dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}},
                          **common)


def bench_row(name, batch, graphs, xs, ref, a, torch_export_s):
    """Both round-robin passes for one model at one batch size; the result row."""
    import numpy as np
    row = {"model": name, "batch": batch, "torch_export_seconds": torch_export_s, "graphs": {}}
    for label, (logits, med, best, load_s, _) in bench_interleaved(graphs, xs, a.threads, a.runs).items():
        err = float(np.abs(logits - ref).max())
        row["graphs"][label] = {"images_per_s": batch / med, "images_per_s_best": batch / best,
                                "max_abs_vs_pytorch": err, "session_load_s": load_s}
        print(f"{name} batch {batch} {label}: {batch / med:.2f} img/s (median; best "
              f"{batch / best:.2f}), max-abs vs PyTorch {err:.2e}, load {load_s:.2f}s",
              file=sys.stderr)
    # Second pass, ORT spinning off: CPU time per image (robust to other load).
    for label, (_, _, _, _, cpu_s) in bench_interleaved(graphs, xs, a.threads, a.runs,
                                                        spinning=False).items():
        row["graphs"][label]["cpu_ms_per_image"] = cpu_s / batch * 1000
        print(f"{name} batch {batch} {label}: {cpu_s / batch * 1000:.1f} CPU ms/image "
              f"(spinning off)", file=sys.stderr)
    for label_t, kind in TORCH_GRAPHS:
        t = row["graphs"][label_t]
        for label, g in row["graphs"].items():
            g[f"speedup_vs_{kind}"] = g["images_per_s"] / t["images_per_s"]
            g[f"speedup_vs_{kind}_best"] = g["images_per_s_best"] / t["images_per_s_best"]
            g[f"cpu_speedup_vs_{kind}"] = t["cpu_ms_per_image"] / g["cpu_ms_per_image"]
    for label, g in row["graphs"].items():
        if not label.startswith("torch"):
            print(f"{name} batch {batch} {label}: " + ", ".join(
                f"{g[f'speedup_vs_{kind}']:.3f}x {kind} (CPU {g[f'cpu_speedup_vs_{kind}']:.3f}x)"
                for _, kind in TORCH_GRAPHS), file=sys.stderr)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/vit-export-bench")
    ap.add_argument("--models", default="ti,s")
    ap.add_argument("--batch", default="8,32",
                    help="comma-separated batch sizes; 32 is vit-batch score's default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--skip-base", action="store_true")
    ap.add_argument("--json", help="also write the results here (default WORK/results.json)")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    import shutil
    build_exporter()

    batches = [int(b) for b in a.batch.split(",")]
    results = {"batches": batches, "threads": a.threads, "runs": a.runs, "export": [], "throughput": []}
    # Before importing torch, so that this process stays small (see run_export).
    if not a.skip_base:
        weights_bytes = None
        for variant in ("standard", "fused"):
            out = os.path.join(a.work, f"base-{variant}")
            shutil.rmtree(out, ignore_errors=True)
            r = run_export(["--preset", "vit-base-patch16-224", "--seed", "0", "--out", out,
                            "--variant", variant])
            weights_bytes = r["num_params"] * 4
            r["weights_bytes"] = weights_bytes
            r["peak_over_weights"] = r["peak_rss_bytes"] / weights_bytes
            results["export"].append(r)
            print(f"export vit-base {variant}: {r['export_seconds']:.2f}s, peak RSS "
                  f"{r['peak_rss_bytes'] / 2**20:.0f} MiB = {r['peak_over_weights']:.2f}x weights "
                  f"({r['num_params']} params)", file=sys.stderr)
            shutil.rmtree(out, ignore_errors=True)

    import numpy as np
    import torch
    from transformers import ViTConfig, ViTForImageClassification
    torch.set_num_threads(a.threads)

    if not a.skip_base:
        # The same architecture from an HF checkpoint folder (memory-mapped weights).
        hf = os.path.join(a.work, "b", "hf")
        torch.manual_seed(0)
        cfg = ViTConfig(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12,
                        num_attention_heads=12, intermediate_size=3072, num_labels=1000)
        ViTForImageClassification(cfg).save_pretrained(hf, safe_serialization=True)
        for variant in ("standard", "fused"):
            out = os.path.join(a.work, f"base-ck-{variant}")
            shutil.rmtree(out, ignore_errors=True)
            r = run_export(["--checkpoint", hf, "--out", out, "--variant", variant])
            r["weights_bytes"] = r["num_params"] * 4
            r["peak_over_weights"] = r["peak_rss_bytes"] / r["weights_bytes"]
            results["export"].append(r)
            print(f"export vit-base from checkpoint, {variant}: {r['export_seconds']:.2f}s, peak RSS "
                  f"{r['peak_rss_bytes'] / 2**20:.0f} MiB = {r['peak_over_weights']:.2f}x weights",
                  file=sys.stderr)
            shutil.rmtree(out, ignore_errors=True)

    for key in a.models.split(","):
        name, d, layers, heads = SIZES[key]
        base = os.path.join(a.work, key)
        hf = os.path.join(base, "hf")
        torch.manual_seed(0)
        cfg = ViTConfig(image_size=224, patch_size=16, hidden_size=d, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * d, num_labels=1000,
                        attn_implementation="eager")
        model = ViTForImageClassification(cfg).eval()
        model.save_pretrained(hf, safe_serialization=True)
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        graphs, torch_export_s = {}, {}
        for label, kind in TORCH_GRAPHS:
            path = os.path.join(base, f"torch-{kind}.onnx")
            t = time.perf_counter()
            export_torch(torch, model, x, path, kind)
            torch_export_s[label] = time.perf_counter() - t
            graphs[label] = path
        for variant in ("standard", "fused"):
            out = os.path.join(base, f"ours-{variant}")
            shutil.rmtree(out, ignore_errors=True)
            r = run_export(["--checkpoint", hf, "--out", out, "--variant", variant])
            graphs[f"vit-batch {variant}"] = os.path.join(out, "model.onnx")
            print(f"{name}: our {variant} export {r['export_seconds']:.2f}s", file=sys.stderr)
        for batch in batches:
            xt = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                ref = model(xt).logits.numpy()
            results["throughput"].append(
                bench_row(name, batch, graphs, xt.numpy(), ref, a, torch_export_s))
    path = a.json or os.path.join(a.work, "results.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"results: {path}", file=sys.stderr)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
