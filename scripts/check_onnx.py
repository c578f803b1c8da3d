#!/usr/bin/env python3
"""Run the official ONNX checker on an exported model: `check_onnx.py MODEL.onnx`.

Why it exists: ONNX Runtime accepts some graphs the spec does not (and the reverse);
the export tests run this so every committed exporter change yields spec-valid ONNX.
Used by tests/integration/export.rs through the project venv (scripts/setup).

- Default-domain-only models: `onnx.checker.check_model(model, full_check=True)`,
  i.e. structural checks plus strict shape inference over the whole graph.
- Models that import `com.microsoft` (the Fused variant): the checker validates the
  structure of every node and fully checks every default-domain node, but it has no
  schemas for ONNX Runtime's contrib ops, so strict shape inference cannot run
  through them (it stops at the first unknown op's outputs). We run
  `check_model(full_check=True)` anyway — with its default
  `check_custom_domain=False` the checker skips the schema check of nodes in
  non-ONNX domains instead of failing, and strict shape inference leaves their
  outputs unshaped — and additionally run non-strict shape inference with type
  checks, which propagates shapes as far as it can; both must pass.
Prints one line "ok: ..." and exits 0, or prints the checker's error and exits 1.
"""
import sys

import onnx
from onnx import checker, shape_inference


def main():
    if len(sys.argv) != 2:
        print("usage: check_onnx.py MODEL.onnx", file=sys.stderr)
        return 2
    path = sys.argv[1]
    try:
        model = onnx.load(path)
        custom = sorted({o.domain for o in model.opset_import if o.domain not in ("", "ai.onnx")})
        checker.check_model(model, full_check=True)
        if custom:
            shape_inference.infer_shapes(model, check_type=True, strict_mode=False)
    except Exception as e:  # the checker raises several exception types
        print(f"fail: {path}: {type(e).__name__}: {e}")
        return 1
    ops = sorted({(n.domain or "ai.onnx", n.op_type) for n in model.graph.node})
    print(f"ok: {path}: ir_version={model.ir_version} opsets="
          f"{[(o.domain or 'ai.onnx', o.version) for o in model.opset_import]} "
          f"custom_domains={custom} ops={len(ops)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
