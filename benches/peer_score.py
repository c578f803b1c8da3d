#!/usr/bin/env python3
"""The Python peer: score an ImageFolder "the usual way" with Pillow + onnxruntime.

Same job as `vit-batch score`: walk DATA/<class>/<file> in sorted order, decode with
Pillow (EXIF transpose + convert("RGB"), as transformers.image_utils.load_image),
preprocess with ViTImageProcessor semantics read from the model folder's
preprocessor_config.json (resize to {height, width} with the configured Pillow filter,
rescale, normalize, CHW float32), run an onnxruntime InferenceSession on the CPU,
softmax + top-k, write one CSV row per image. The decode of batch i+1 runs in a
ThreadPoolExecutor while batch i is in session.run (Pillow releases the GIL while
decoding and resizing, so the workers decode in parallel).

Prints `peer_score: ... img/s` and a machine-readable line
`RESULT tool=peer images=N seconds=S images_per_s=R top1=T` where S runs from the
first decode to the last row written (session creation and the walk excluded, as in
vit-batch's own throughput figure).

    /work/.venvs/bench/bin/python benches/peer_score.py DATA --model MODEL_DIR --out preds.csv --threads 2 --batch-size 32
"""

import argparse
import csv
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def walk(data):
    """(rel_path, class) for every image, sorted like torchvision's ImageFolder."""
    out = []
    for cls in sorted(p.name for p in Path(data).iterdir() if p.is_dir() and not p.name.startswith(".")):
        for root, dirs, files in os.walk(Path(data) / cls):
            dirs.sort()
            for f in sorted(files):
                if Path(f).suffix.lower() in IMAGE_EXTS and not f.startswith("."):
                    out.append((str((Path(root) / f).relative_to(data)), cls))
    out.sort(key=lambda e: e[0].encode())
    return out


class ViTPreprocess:
    """ViTImageProcessor (do_resize / do_rescale / do_normalize; exact size)."""

    def __init__(self, model_dir):
        p = Path(model_dir) / "preprocessor_config.json"
        cfg = json.loads(p.read_text())
        size = cfg.get("size", {"height": 224, "width": 224})
        if "height" not in size:
            sys.exit(f"{p}: only ViTImageProcessor-style exact sizes are supported here, got size={size}")
        if cfg.get("do_center_crop"):
            sys.exit(f"{p}: do_center_crop is not supported by this peer")
        self.size = (int(size["width"]), int(size["height"]))
        self.do_resize = cfg.get("do_resize", True)
        self.resample = Image.Resampling(int(cfg.get("resample", 2)))
        self.do_rescale = cfg.get("do_rescale", True)
        self.scale = float(cfg.get("rescale_factor", 1 / 255))
        self.do_normalize = cfg.get("do_normalize", True)
        self.mean = np.asarray(cfg.get("image_mean", [0.5] * 3), np.float32).reshape(3, 1, 1)
        self.std = np.asarray(cfg.get("image_std", [0.5] * 3), np.float32).reshape(3, 1, 1)

    def __call__(self, path):
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im = im.convert("RGB")
            if self.do_resize:
                im = im.resize(self.size, self.resample)
            a = np.asarray(im)
        x = a.transpose(2, 0, 1).astype(np.float32)
        if self.do_rescale:
            x *= self.scale
        if self.do_normalize:
            x = (x - self.mean) / self.std
        return x


_OPENVINO_REGISTERED = False


def make_session(model_dir, threads, spin=True, provider="cpu", precision="fp32"):
    """An ORT session on the CPU EP, or on the OpenVINO plugin EP (PyPI
    onnxruntime-ep-openvino, the same plugin `vit-batch --provider openvino` loads) with
    its precision and threads set explicitly, every node on OpenVINO."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    path = str(Path(model_dir) / "model.onnx")
    if provider == "cpu":
        if precision != "fp32":
            sys.exit("the CPU EP runs fp32 only")
        return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    import onnxruntime_ep_openvino as ovep

    global _OPENVINO_REGISTERED
    if not _OPENVINO_REGISTERED:
        ort.register_execution_provider_library("openvino", ovep.get_library_path())
        _OPENVINO_REGISTERED = True
    devs = [d for d in ort.get_ep_devices()
            if d.ep_name == ovep.get_ep_name() and d.device.type == ort.OrtHardwareDeviceType.CPU]
    if not devs:
        sys.exit("the OpenVINO plugin offers no CPU device")
    hint = {"fp32": "f32", "bf16": "bf16"}[precision]
    cfg = {"CPU": {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": str(threads)}}
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    so.add_provider_for_devices(devs, {"load_config": json.dumps(cfg)})
    return ort.InferenceSession(path, so)


def model_labels(model_dir):
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    id2 = cfg.get("id2label") or {}
    return [id2[str(i)] for i in range(len(id2))]


def read_label_map(path):
    m = {}
    if not path:
        return m
    for i, line in enumerate(Path(path).read_text().splitlines()):
        line = line.strip()
        if not line or line.startswith("#") or (i == 0 and line.lower() == "folder,label"):
            continue
        f, l = line.split(",", 1)
        m[f.strip()] = l.strip()
    return m


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--model", required=True, type=Path, help="model folder (model.onnx, config.json, preprocessor_config.json)")
    ap.add_argument("--out", required=True, type=Path, help="predictions CSV")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    ap.add_argument("--decode-workers", type=int, default=None, help="decode threads (default: --threads)")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--label-map", type=Path)
    ap.add_argument("--no-spin", action="store_true", help="session.intra_op.allow_spinning=0 (ORT default is to spin)")
    ap.add_argument("--provider", choices=["cpu", "openvino"], default="cpu",
                    help="ORT's CPU EP or the OpenVINO plugin EP (pip install onnxruntime-ep-openvino==1.8.1)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="OpenVINO INFERENCE_PRECISION_HINT")
    a = ap.parse_args()

    pre = ViTPreprocess(a.model)
    sess = make_session(a.model, a.threads, spin=not a.no_spin, provider=a.provider, precision=a.precision)
    inp = sess.get_inputs()[0].name
    labels = model_labels(a.model)
    lmap = read_label_map(a.label_map)
    label2id = {l: i for i, l in enumerate(labels)}
    entries = walk(a.data)
    if not entries:
        sys.exit(f"no images under {a.data}")
    k = min(a.top_k, len(labels))
    bs = a.batch_size
    batches = [entries[s : s + bs] for s in range(0, len(entries), bs)]
    workers = a.decode_workers or a.threads

    def load_batch(b):
        # One task per image; the executor's threads decode them in parallel.
        return list(ex.map(lambda e: pre(a.data / e[0]), b))

    t0 = time.perf_counter()
    n = correct = counted = 0
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(workers) as ex, ThreadPoolExecutor(1) as prefetch, open(a.out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "pred", "score", "correct", "topk_ids", "topk_scores"])
        fut = prefetch.submit(load_batch, batches[0])
        for bi, b in enumerate(batches):
            xs = fut.result()
            if bi + 1 < len(batches):
                fut = prefetch.submit(load_batch, batches[bi + 1])
            x = np.stack(xs)
            logits = sess.run(None, {inp: x})[0]
            probs = softmax(logits.astype(np.float32))
            top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
            for (rel, cls), p, t in zip(b, probs, top):
                want = label2id.get(lmap.get(cls, cls))
                ok = "" if want is None else str(int(want == t[0])).lower()
                if want is not None:
                    counted += 1
                    correct += int(want == t[0])
                w.writerow([rel, cls, labels[t[0]], f"{p[t[0]]:.6g}", ok,
                            " ".join(map(str, t)), " ".join(f"{p[j]:.6g}" for j in t)])
            n += len(b)
    dt = time.perf_counter() - t0
    top1 = correct / counted if counted else float("nan")
    print(f"peer_score: {n} images in {dt:.2f}s, {n / dt:.1f} img/s; top-1 {100 * top1:.2f}% ({a.threads} ORT threads, {workers} decode threads, batch {bs}, {a.provider} {a.precision})")
    print(f"RESULT tool=peer images={n} seconds={dt:.4f} images_per_s={n / dt:.3f} top1={top1:.6f}")


if __name__ == "__main__":
    main()
