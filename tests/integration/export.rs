//! `vit_batch::export` against real ONNX Runtime sessions, the independent reference
//! forward pass (`reference_vit`), PyTorch's own logits (fixtures/hf-parity), the
//! official ONNX checker, and bad checkpoints that must fail with typed errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{Array4, ArrayD};
use ort::session::Session;
use ort::value::TensorRef;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use vit_batch::export::{export, ExportOptions, ExportSource, GraphVariant};
use vit_batch::Error;

use crate::reference_vit::{self, RefConfig, Tensors};
use crate::util;

const TOL: f64 = 1e-4;
const VARIANTS: [GraphVariant; 2] = [GraphVariant::Standard, GraphVariant::Fused];

/// ONNX Runtime, initialised once per test binary through the library's own loader
/// (ONNX Runtime allows one environment per process, shared by all test modules).
fn env() -> &'static ort::environment::Environment {
    vit_batch::runtime::init(Some(&util::ort_lib()), false).expect("load ONNX Runtime");
    vit_batch::runtime::environment().expect("ORT environment")
}

fn session(model: &Path) -> Session {
    Session::builder(env())
        .unwrap()
        .with_intra_threads(2)
        .unwrap()
        .commit_from_file(model)
        .unwrap_or_else(|e| panic!("ORT cannot load {}: {e}", model.display()))
}

/// Run `pixels` through the model; returns every output by name.
fn run(sess: &mut Session, pixels: &Array4<f32>) -> BTreeMap<String, ArrayD<f32>> {
    let names: Vec<String> = sess
        .outputs()
        .iter()
        .map(|o| o.name().to_string())
        .collect();
    let outs = sess
        .run(ort::inputs!["pixel_values" => TensorRef::from_array_view(pixels).unwrap()])
        .unwrap();
    names
        .into_iter()
        .map(|n| {
            let a = outs[n.as_str()]
                .try_extract_array::<f32>()
                .unwrap()
                .to_owned();
            (n, a)
        })
        .collect()
}

fn random_pixels(batch: usize, size: usize, seed: u64) -> Array4<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    Array4::from_shape_fn((batch, 3, size, size), |_| rng.random_range(-1.0f32..1.0))
}

/// The `vit-micro` preset (32×32 input, 4 blocks), random weights from `seed`.
fn micro_preset(seed: u64, num_labels: usize) -> ExportSource {
    ExportSource::Preset {
        name: "vit-micro".into(),
        seed,
        num_labels,
    }
}

fn max_abs(a: impl Iterator<Item = f64>, b: impl Iterator<Item = f64>) -> f64 {
    a.zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Compare ORT's outputs with the reference, logits and every attention map.
fn check_against_reference(
    model_dir: &Path,
    rc: &RefConfig,
    tensors: &Tensors,
    labels: usize,
    attentions: bool,
    what: &str,
) {
    let mut sess = session(&model_dir.join("model.onnx"));
    for (bi, batch) in [1usize, 2, 7].into_iter().enumerate() {
        let px = random_pixels(batch, rc.image, 100 + bi as u64);
        let outs = run(&mut sess, &px);
        let r = reference_vit::forward(rc, tensors, px.as_slice().unwrap(), batch);
        let logits = &outs["logits"];
        assert_eq!(logits.shape(), &[batch, labels], "{what}");
        let err = max_abs(
            logits.iter().map(|&v| v as f64),
            r.logits.iter().flatten().copied(),
        );
        assert!(
            err < TOL,
            "{what} batch {batch}: logits max-abs error {err}"
        );
        // The reference is not trivially zero (a broken head would be caught).
        assert!(
            r.logits.iter().flatten().any(|v| v.abs() > 1e-3),
            "{what}: degenerate logits"
        );
        if attentions {
            for (li, lr) in r.attentions.iter().enumerate() {
                let a = &outs[&format!("attentions.{li}")];
                let s = lr[0][0].len();
                assert_eq!(a.shape(), &[batch, rc.heads, s, s], "{what}");
                let err = max_abs(
                    a.iter().map(|&v| v as f64),
                    lr.iter().flatten().flatten().flatten().copied(),
                );
                assert!(
                    err < TOL,
                    "{what} batch {batch}: attentions.{li} max-abs error {err}"
                );
            }
        } else {
            assert_eq!(outs.len(), 1, "{what}: only logits expected");
        }
    }
}

fn to_ref_tensors(m: &BTreeMap<String, vit_batch::export::Tensor<'_>>) -> Tensors {
    m.iter()
        .map(|(k, t)| (k.clone(), (t.shape.clone(), t.to_f32())))
        .collect()
}

#[test]
fn export_preset_matches_reference_both_variants() {
    let labels = 10;
    let cfg = vit_batch::vit::VitConfig::preset("vit-micro", labels).unwrap();
    let tensors = to_ref_tensors(&vit_batch::export::presets::random_init(&cfg, 3));
    let rc = RefConfig {
        prefix: "vit",
        image: 32,
        patch: 4,
        channels: 3,
        hidden: 64,
        layers: 4,
        heads: 4,
        eps: 1e-12,
        tanh_gelu: false,
    };
    for variant in VARIANTS {
        for attn in [false, true] {
            let tmp = util::tempdir();
            let out = tmp.path().join("onnx");
            let mut o = ExportOptions::new(micro_preset(3, labels), &out);
            o.variant = variant;
            o.with_attentions = attn;
            let s = export(&o).unwrap();
            assert_eq!(s.variant, variant);
            assert_eq!(
                s.num_params,
                tensors.values().map(|t| t.1.len()).sum::<usize>()
            );
            assert!(s.source_sha256.is_none() && s.warnings.is_empty());
            check_against_reference(
                &out,
                &rc,
                &tensors,
                labels,
                attn,
                &format!("vit-micro {variant:?} attn={attn}"),
            );
        }
    }
}

/// Random values for every tensor (biases and LayerNorm parameters too, so that a
/// bias or a norm applied wrongly shows).
fn random_hf_tensors(prefix: &str, c: &CkSpec, seed: u64) -> Tensors {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut r = |shape: Vec<usize>, mean: f32, std: f32| {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| mean + std * rng.random_range(-1.7f32..1.7))
            .collect();
        (shape, v)
    };
    let (d, i, p) = (c.hidden, c.inter, c.patch);
    let n = (c.image / p) * (c.image / p);
    let extra = if c.dist { 2 } else { 1 };
    let mut t = Tensors::new();
    let e = format!("{prefix}.embeddings");
    t.insert(format!("{e}.cls_token"), r(vec![1, 1, d], 0.0, 0.5));
    if c.dist {
        t.insert(
            format!("{e}.distillation_token"),
            r(vec![1, 1, d], 0.0, 0.5),
        );
    }
    t.insert(
        format!("{e}.position_embeddings"),
        r(vec![1, n + extra, d], 0.0, 0.5),
    );
    t.insert(
        format!("{e}.patch_embeddings.projection.weight"),
        r(vec![d, 3, p, p], 0.0, 0.1),
    );
    t.insert(
        format!("{e}.patch_embeddings.projection.bias"),
        r(vec![d], 0.0, 0.1),
    );
    for li in 0..c.layers {
        let l = format!("{prefix}.encoder.layer.{li}");
        for ln in ["layernorm_before", "layernorm_after"] {
            t.insert(format!("{l}.{ln}.weight"), r(vec![d], 1.0, 0.2));
            t.insert(format!("{l}.{ln}.bias"), r(vec![d], 0.0, 0.2));
        }
        for (name, o, inp) in [
            ("attention.attention.query", d, d),
            ("attention.attention.key", d, d),
            ("attention.attention.value", d, d),
            ("attention.output.dense", d, d),
            ("intermediate.dense", i, d),
            ("output.dense", d, i),
        ] {
            t.insert(
                format!("{l}.{name}.weight"),
                r(vec![o, inp], 0.0, 1.0 / (inp as f32).sqrt()),
            );
            if !name.starts_with("attention.attention") || c.qkv_bias {
                t.insert(format!("{l}.{name}.bias"), r(vec![o], 0.0, 0.1));
            }
        }
    }
    t.insert(format!("{prefix}.layernorm.weight"), r(vec![d], 1.0, 0.2));
    t.insert(format!("{prefix}.layernorm.bias"), r(vec![d], 0.0, 0.2));
    let heads: &[&str] = if c.teacher {
        &["cls_classifier", "distillation_classifier"]
    } else {
        &["classifier"]
    };
    for h in heads {
        t.insert(format!("{h}.weight"), r(vec![c.labels, d], 0.0, 0.2));
        t.insert(format!("{h}.bias"), r(vec![c.labels], 0.0, 0.2));
    }
    t
}

struct CkSpec {
    image: usize,
    patch: usize,
    hidden: usize,
    layers: usize,
    heads: usize,
    inter: usize,
    labels: usize,
    eps: f64,
    act: &'static str,
    qkv_bias: bool,
    dist: bool,
    teacher: bool,
}

fn config_json(model_type: &str, c: &CkSpec) -> serde_json::Value {
    let id2label: serde_json::Map<String, serde_json::Value> = (0..c.labels)
        .map(|i| (i.to_string(), json!(format!("class_{i}"))))
        .collect();
    json!({
        "model_type": model_type,
        "image_size": c.image, "patch_size": c.patch, "num_channels": 3,
        "hidden_size": c.hidden, "num_hidden_layers": c.layers,
        "num_attention_heads": c.heads, "intermediate_size": c.inter,
        "hidden_act": c.act, "layer_norm_eps": c.eps, "qkv_bias": c.qkv_bias,
        "id2label": id2label,
    })
}

/// Write `config.json` + `model.safetensors` (F32) into `dir`.
fn write_checkpoint(dir: &Path, config: &serde_json::Value, t: &Tensors) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(config).unwrap(),
    )
    .unwrap();
    let bytes: BTreeMap<&String, (Vec<usize>, Vec<u8>)> = t
        .iter()
        .map(|(k, (s, v))| {
            (
                k,
                (s.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(k, (s, b))| {
            (
                (*k).clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

fn vit_spec() -> CkSpec {
    CkSpec {
        image: 48,
        patch: 8,
        hidden: 48,
        layers: 3,
        heads: 3,
        inter: 80,
        labels: 7,
        eps: 1e-6,
        act: "gelu",
        qkv_bias: true,
        dist: false,
        teacher: false,
    }
}

#[test]
fn export_checkpoints_match_reference_both_variants() {
    let deit = CkSpec {
        image: 32,
        patch: 8,
        hidden: 32,
        layers: 2,
        heads: 4,
        inter: 64,
        labels: 5,
        eps: 1e-12,
        act: "gelu_pytorch_tanh",
        qkv_bias: false,
        dist: true,
        teacher: true,
    };
    // DeiTForImageClassification (no teacher): distillation token, one head on [CLS].
    let deit_plain = CkSpec {
        teacher: false,
        act: "gelu",
        qkv_bias: true,
        ..deit
    };
    let cases: [(&str, CkSpec); 3] = [("vit", vit_spec()), ("deit", deit), ("deit", deit_plain)];
    for (prefix, spec) in &cases {
        let tmp = util::tempdir();
        let ck = tmp.path().join("ck");
        let tensors = random_hf_tensors(prefix, spec, 11);
        write_checkpoint(&ck, &config_json(prefix, spec), &tensors);
        let rc = RefConfig {
            prefix: if *prefix == "vit" { "vit" } else { "deit" },
            image: spec.image,
            patch: spec.patch,
            channels: 3,
            hidden: spec.hidden,
            layers: spec.layers,
            heads: spec.heads,
            eps: spec.eps,
            tanh_gelu: spec.act != "gelu",
        };
        for (variant, attn) in VARIANTS.into_iter().flat_map(|v| [(v, true), (v, false)]) {
            let out = tmp.path().join(format!("out-{variant:?}-{attn}"));
            let mut o = ExportOptions::new(ExportSource::Checkpoint(ck.clone()), &out);
            o.variant = variant;
            o.with_attentions = attn;
            let s = export(&o).unwrap();
            assert!(s.warnings.is_empty(), "{:?}", s.warnings);
            let want_sha = {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(
                    std::fs::read(ck.join("model.safetensors")).unwrap(),
                ))
            };
            assert_eq!(s.source_sha256.as_deref(), Some(want_sha.as_str()));
            check_against_reference(
                &out,
                &rc,
                &tensors,
                spec.labels,
                attn,
                &format!("{prefix} {variant:?} attn={attn} teacher={}", spec.teacher),
            );
        }
    }
}

#[test]
fn export_folder_layout_and_metadata() {
    use prost::Message;
    let tmp = util::tempdir();
    let ck = tmp.path().join("ck");
    let spec = vit_spec();
    write_checkpoint(
        &ck,
        &config_json("vit", &spec),
        &random_hf_tensors("vit", &spec, 5),
    );
    let out = tmp.path().join("out");
    let s = export(&ExportOptions::new(
        ExportSource::Checkpoint(ck.clone()),
        &out,
    ))
    .unwrap();
    assert_eq!(s.opset, 18);
    let bytes = std::fs::read(out.join("model.onnx")).unwrap();
    assert_eq!(bytes.len() as u64, s.model_bytes);
    let m = vit_batch::onnx::ModelProto::decode(bytes.as_slice()).unwrap();
    assert_eq!(m.producer_name.as_deref(), Some("vit-batch"));
    assert_eq!(
        m.producer_version.as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(m.ir_version, Some(8));
    let meta: BTreeMap<_, _> = m
        .metadata_props
        .iter()
        .map(|p| (p.key.clone().unwrap(), p.value.clone().unwrap()))
        .collect();
    assert_eq!(meta.get("source_sha256"), s.source_sha256.as_ref());
    let g = m.graph.unwrap();
    assert_eq!(g.input.len(), 1);
    assert_eq!(g.input[0].name.as_deref(), Some("pixel_values"));
    assert_eq!(g.output[0].name.as_deref(), Some("logits"));
    let dims = |vi: &vit_batch::onnx::ValueInfoProto| -> Vec<String> {
        use vit_batch::onnx::{tensor_shape_proto::dimension::Value, type_proto};
        let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_ref().unwrap().value.as_ref()
        else {
            panic!()
        };
        t.shape
            .as_ref()
            .unwrap()
            .dim
            .iter()
            .map(|d| match d.value.as_ref().unwrap() {
                Value::DimValue(v) => v.to_string(),
                Value::DimParam(p) => p.clone(),
            })
            .collect()
    };
    assert_eq!(dims(&g.input[0]), ["batch", "3", "48", "48"]);
    assert_eq!(dims(&g.output[0]), ["batch", "7"]);
    // config.json round-trips with the labels; preprocessor defaults are ViT's.
    let cfg = vit_batch::vit::VitConfig::from_file(&out.join("config.json")).unwrap();
    assert_eq!(cfg.labels().unwrap()[6], "class_6");
    let pp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("preprocessor_config.json")).unwrap())
            .unwrap();
    assert_eq!(pp["size"], json!({"height": 48, "width": 48}));
    assert_eq!(pp["image_mean"], json!([0.5, 0.5, 0.5]));
    assert_eq!(pp["resample"], json!(2));
    assert_eq!(pp["image_processor_type"], json!("ViTImageProcessor"));
    // A checkpoint's own preprocessor_config.json is copied verbatim.
    let custom =
        br#"{"image_processor_type": "ViTImageProcessor", "image_mean": [0.485, 0.456, 0.406]}"#;
    std::fs::write(ck.join("preprocessor_config.json"), custom).unwrap();
    export(&ExportOptions::new(
        ExportSource::Checkpoint(ck.clone()),
        &out,
    ))
    .unwrap();
    assert_eq!(
        std::fs::read(out.join("preprocessor_config.json")).unwrap(),
        custom
    );
    // No temporary files are left behind.
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    // Refused: a non-empty folder that is not a previous export, and the checkpoint itself.
    let e = export(&ExportOptions::new(
        ExportSource::Checkpoint(ck.clone()),
        &ck,
    ))
    .unwrap_err();
    assert!(
        matches!(&e, Error::OutDir { what, .. } if what.contains("inside the input")),
        "{e}"
    );
    let other = tmp.path().join("other");
    util::write(&other.join("notes.txt"), b"mine");
    let e = export(&ExportOptions::new(ExportSource::Checkpoint(ck), &other)).unwrap_err();
    assert!(
        matches!(&e, Error::OutDir { what, .. } if what.contains("holds no model.onnx")),
        "{e}"
    );
    assert_eq!(std::fs::read(other.join("notes.txt")).unwrap(), b"mine");
}

#[test]
fn export_preset_is_deterministic() {
    let tmp = util::tempdir();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let c = tmp.path().join("c");
    let src = |seed| micro_preset(seed, 4);
    export(&ExportOptions::new(src(9), &a)).unwrap();
    export(&ExportOptions::new(src(9), &b)).unwrap();
    export(&ExportOptions::new(src(10), &c)).unwrap();
    let read = |p: &PathBuf| std::fs::read(p.join("model.onnx")).unwrap();
    assert_eq!(read(&a), read(&b));
    assert_ne!(read(&a), read(&c));
}

// ---------------------------------------------------------------- bad checkpoints

fn export_ck(ck: &Path, out: &Path) -> vit_batch::Result<vit_batch::export::ExportSummary> {
    export(&ExportOptions::new(
        ExportSource::Checkpoint(ck.to_path_buf()),
        out,
    ))
}

// Long on purpose: one broken checkpoint after another, each a few lines of setup and
// one typed-error assertion; split up, the cases would only repeat the setup.
#[test]
fn export_bad_checkpoints_fail_with_typed_errors() {
    let spec = vit_spec();
    let good = random_hf_tensors("vit", &spec, 1);
    let cfg = config_json("vit", &spec);
    let tmp = util::tempdir();
    let case = |name: &str,
                cfg: &serde_json::Value,
                t: &Tensors|
     -> vit_batch::Result<vit_batch::export::ExportSummary> {
        let ck = tmp.path().join(name);
        write_checkpoint(&ck, cfg, t);
        export_ck(&ck, &tmp.path().join(format!("{name}-out")))
    };

    // Missing tensor.
    let mut t = good.clone();
    let missing = "vit.encoder.layer.1.attention.attention.key.weight";
    t.remove(missing);
    match case("missing", &cfg, &t) {
        Err(Error::MissingTensor { name }) => assert_eq!(name, missing),
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    assert!(
        !tmp.path().join("missing-out").exists(),
        "a failed export leaves no folder"
    );
    // Wrong shape.
    let mut t = good.clone();
    let bad = "vit.encoder.layer.2.intermediate.dense.weight";
    t.insert(bad.into(), (vec![80, 47], vec![0.0; 80 * 47]));
    match case("shape", &cfg, &t) {
        Err(Error::TensorShape {
            name,
            expected,
            found,
        }) => {
            assert_eq!(
                (name.as_str(), expected, found),
                (bad, vec![80, 48], vec![80, 47])
            );
        }
        other => panic!("expected TensorShape, got {other:?}"),
    }
    // Unsupported activation.
    let mut c = cfg.clone();
    c["hidden_act"] = json!("relu");
    let e = case("act", &c, &good).unwrap_err();
    assert!(
        matches!(&e, Error::Config { what } if what.contains("relu")),
        "{e}"
    );
    // Config that does not match the weights: hidden size, classes, depth.
    let mut c = cfg.clone();
    c["hidden_size"] = json!(96);
    c["num_attention_heads"] = json!(3);
    let e = case("hidden", &c, &good).unwrap_err();
    assert!(
        matches!(&e, Error::TensorShape { expected, found, .. } if expected.contains(&96) && found.contains(&48)),
        "{e}"
    );
    let mut c = cfg.clone();
    c["id2label"] = json!({"0": "a", "1": "b"});
    match case("labels", &c, &good) {
        Err(Error::TensorShape {
            name,
            expected,
            found,
        }) => {
            assert_eq!(name, "classifier.weight");
            assert_eq!((expected, found), (vec![2, 48], vec![7, 48]));
        }
        other => panic!("expected TensorShape, got {other:?}"),
    }
    let mut c = cfg.clone();
    c["num_hidden_layers"] = json!(2);
    let e = case("depth", &c, &good).unwrap_err();
    assert!(
        matches!(&e, Error::Checkpoint { what } if what.contains("num_hidden_layers = 2") && what.contains("layer.2")),
        "{e}"
    );
    // Unknown extra tensors: exported, and reported.
    let mut t = good.clone();
    t.insert(
        "vit.pooler.dense.weight".into(),
        (vec![48, 48], vec![0.0; 48 * 48]),
    );
    let s = case("extra", &cfg, &t).unwrap();
    assert_eq!(s.warnings.len(), 1);
    assert!(
        s.warnings[0].contains("vit.pooler.dense.weight"),
        "{:?}",
        s.warnings
    );
    // Not a ViT at all, an unreadable file, a folder without weights, a bad dtype.
    let e = case(
        "notvit",
        &cfg,
        &BTreeMap::from([("foo".to_string(), (vec![1], vec![1.0]))]),
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::Checkpoint { what } if what.contains("not a ViT")),
        "{e}"
    );
    let ck = tmp.path().join("corrupt");
    write_checkpoint(&ck, &cfg, &good);
    std::fs::write(ck.join("model.safetensors"), b"\x10\0\0\0\0\0\0\0{not json").unwrap();
    let e = export_ck(&ck, &tmp.path().join("corrupt-out")).unwrap_err();
    assert!(
        matches!(&e, Error::Checkpoint { what } if what.contains("safetensors")),
        "{e}"
    );
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = export_ck(&empty, &tmp.path().join("empty-out")).unwrap_err();
    assert!(
        matches!(&e, Error::Checkpoint { what } if what.contains("model.safetensors")),
        "{e}"
    );
    let ck = tmp.path().join("dtype");
    write_checkpoint(&ck, &cfg, &good);
    {
        // Re-write one tensor as I64.
        let buf = std::fs::read(ck.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&buf).unwrap();
        let mut views: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
        let zeros = vec![0u8; 48 * 8];
        for (n, v) in views.iter_mut() {
            if n == "vit.layernorm.bias" {
                *v =
                    safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![48], &zeros)
                        .unwrap();
            }
        }
        let bytes = safetensors::serialize(views, None).unwrap();
        std::fs::write(ck.join("model.safetensors"), bytes).unwrap();
    }
    let e = export_ck(&ck, &tmp.path().join("dtype-out")).unwrap_err();
    assert!(
        matches!(&e, Error::Checkpoint { what } if what.contains("vit.layernorm.bias") && what.contains("I64")),
        "{e}"
    );
    // Unsupported opset.
    let mut o = ExportOptions::new(micro_preset(0, 2), tmp.path().join("opset-out"));
    o.opset = 13;
    let e = export(&o).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidOption { option: "opset", what } if what.contains("opset 13")),
        "{e}"
    );
    // Unknown preset.
    let e = export(&ExportOptions::new(
        ExportSource::Preset {
            name: "vit-huge".into(),
            seed: 0,
            num_labels: 2,
        },
        tmp.path().join("preset-out"),
    ))
    .unwrap_err();
    assert!(
        matches!(&e, Error::Config { what } if what.contains("vit-huge")),
        "{e}"
    );
}

// ---------------------------------------------------------------- HF parity

fn read_io(path: &Path) -> (Array4<f32>, ArrayD<f32>) {
    let buf = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&buf).unwrap();
    let get = |n: &str| {
        let t = st.tensor(n).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        let v: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        ArrayD::from_shape_vec(t.shape().to_vec(), v).unwrap()
    };
    let px = get("pixel_values")
        .into_dimensionality::<ndarray::Ix4>()
        .unwrap();
    (px, get("logits"))
}

/// Logits of our export vs what PyTorch computed (scripts/fixtures/make_hf_parity.py).
#[test]
fn export_hf_parity_vit_deit_timm() {
    for kind in ["vit", "deit", "timm"] {
        let src = util::fixtures().join("hf-parity").join(kind);
        let (px, want) = read_io(&src.join("io.safetensors"));
        for variant in VARIANTS {
            let tmp = util::tempdir();
            let out = tmp.path().join("onnx");
            let mut o = ExportOptions::new(ExportSource::Checkpoint(src.clone()), &out);
            o.variant = variant;
            let s = export(&o).unwrap();
            assert!(s.warnings.is_empty(), "{kind}: {:?}", s.warnings);
            let got = run(&mut session(&out.join("model.onnx")), &px)
                .remove("logits")
                .unwrap();
            assert_eq!(got.shape(), want.shape(), "{kind}");
            let err = max_abs(
                got.iter().map(|&v| v as f64),
                want.iter().map(|&v| v as f64),
            );
            assert!(
                err < TOL,
                "{kind} {variant:?}: max-abs error vs PyTorch {err}"
            );
            let cfg = vit_batch::vit::VitConfig::from_file(&out.join("config.json")).unwrap();
            assert_eq!(cfg.num_labels(), 5);
            if kind == "timm" {
                assert_eq!(
                    (cfg.num_attention_heads, cfg.layer_norm_eps, cfg.image_size),
                    (2, 1e-6, 32)
                );
            }
        }
    }
}

// ---------------------------------------------------------------- ONNX checker

fn check_onnx(model: &Path) -> std::process::Output {
    std::process::Command::new(util::venv_python())
        .arg(util::repo().join("scripts/check_onnx.py"))
        .arg(model)
        .output()
        .unwrap()
}

#[test]
fn export_passes_onnx_checker_both_variants() {
    let tmp = util::tempdir();
    for variant in VARIANTS {
        for attn in [false, true] {
            let out = tmp.path().join(format!("{variant:?}-{attn}"));
            let mut o = ExportOptions::new(
                ExportSource::Checkpoint(util::fixtures().join("hf-parity/deit")),
                &out,
            );
            o.variant = variant;
            o.with_attentions = attn;
            export(&o).unwrap();
            let r = check_onnx(&out.join("model.onnx"));
            let text = String::from_utf8_lossy(&r.stdout);
            assert!(
                r.status.success(),
                "{variant:?}: {text}{}",
                util::stderr(&r)
            );
            assert!(text.starts_with("ok:"), "{text}");
            let custom = variant == GraphVariant::Fused;
            assert_eq!(text.contains("com.microsoft"), custom, "{text}");
        }
    }
    // The check can fail: drop an initializer that a node reads.
    use prost::Message;
    let path = tmp.path().join("Standard-false/model.onnx");
    let mut m =
        vit_batch::onnx::ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
    m.graph
        .as_mut()
        .unwrap()
        .initializer
        .retain(|t| t.name.as_deref() != Some("layer0.attn.key.weight"));
    let broken = tmp.path().join("broken.onnx");
    std::fs::write(&broken, m.encode_to_vec()).unwrap();
    let r = check_onnx(&broken);
    assert!(
        !r.status.success(),
        "checker accepted a graph with a dangling input"
    );
}

// ---------------------------------------------------------------- graph shape, opsets

fn op_types(model: &Path) -> Vec<(String, String)> {
    use prost::Message;
    let m = vit_batch::onnx::ModelProto::decode(std::fs::read(model).unwrap().as_slice()).unwrap();
    m.graph
        .unwrap()
        .node
        .iter()
        .map(|n| {
            (
                n.domain.clone().unwrap_or_default(),
                n.op_type.clone().unwrap(),
            )
        })
        .collect()
}

#[test]
fn export_variants_use_the_ops_they_claim() {
    let tmp = util::tempdir();
    let src = || micro_preset(1, 3);
    let count = |ops: &[(String, String)], dom: &str, op: &str| {
        ops.iter().filter(|(d, o)| d == dom && o == op).count()
    };
    let mut o = ExportOptions::new(src(), tmp.path().join("std"));
    o.variant = GraphVariant::Standard;
    export(&o).unwrap();
    let ops = op_types(&tmp.path().join("std/model.onnx"));
    assert!(
        ops.iter().all(|(d, _)| d.is_empty()),
        "Standard uses only the default domain"
    );
    assert_eq!(count(&ops, "", "Softmax"), 4);
    assert_eq!(count(&ops, "", "Erf"), 4);
    // Gemms: blocks 0-2 Q, K, V, output, fc1, fc2; the last block projects no keys or
    // values (Q, output, fc1, fc2); plus the classifier. A Conv embeds the patches.
    assert_eq!(count(&ops, "", "Conv"), 1);
    assert_eq!(count(&ops, "", "Gemm"), 3 * 6 + 4 + 1);
    let mut o = ExportOptions::new(src(), tmp.path().join("fused"));
    o.variant = GraphVariant::Fused;
    export(&o).unwrap();
    let ops = op_types(&tmp.path().join("fused/model.onnx"));
    // vit-micro has 4 blocks; the last one attends from [CLS] only (unfused).
    assert_eq!(count(&ops, "com.microsoft", "Attention"), 3);
    assert_eq!(count(&ops, "com.microsoft", "BiasGelu"), 4);
    assert_eq!(count(&ops, "com.microsoft", "Gelu"), 0);
    assert_eq!(count(&ops, "", "Softmax"), 1);
    assert_eq!(
        count(&ops, "", "Slice"),
        2,
        "last block: [CLS] rows of LN output and residual"
    );
    // With attention outputs the fused variant keeps the unfused attention.
    o.with_attentions = true;
    export(&o).unwrap();
    let ops = op_types(&tmp.path().join("fused/model.onnx"));
    assert_eq!(
        (
            count(&ops, "com.microsoft", "Attention"),
            count(&ops, "", "Softmax")
        ),
        (0, 4)
    );
}

/// Every initializer is read by some node, in both variants, with and without
/// attention outputs (ONNX Runtime warns about, and drops, any that are not).
#[test]
fn export_graphs_hold_no_unused_initializers() {
    use prost::Message;
    let tmp = util::tempdir();
    for (variant, attn) in VARIANTS.into_iter().flat_map(|v| [(v, true), (v, false)]) {
        let out = tmp.path().join(format!("{variant:?}-{attn}"));
        let mut o = ExportOptions::new(micro_preset(1, 3), &out);
        o.variant = variant;
        o.with_attentions = attn;
        export(&o).unwrap();
        let bytes = std::fs::read(out.join("model.onnx")).unwrap();
        let g = vit_batch::onnx::ModelProto::decode(bytes.as_slice())
            .unwrap()
            .graph
            .unwrap();
        let read: std::collections::HashSet<&str> = g
            .node
            .iter()
            .flat_map(|n| n.input.iter().map(|s| s.as_str()))
            .collect();
        let unused: Vec<&str> = g
            .initializer
            .iter()
            .filter_map(|t| t.name.as_deref())
            .filter(|n| !read.contains(n))
            .collect();
        assert!(
            unused.is_empty(),
            "{variant:?}, attentions {attn}: {unused:?}"
        );
    }
}

#[test]
fn export_other_opsets_give_the_same_logits() {
    let tmp = util::tempdir();
    let px = random_pixels(2, 32, 5);
    let mut base = None;
    for opset in [18, 17, 21] {
        let out = tmp.path().join(format!("o{opset}"));
        let mut o = ExportOptions::new(micro_preset(2, 3), &out);
        o.opset = opset;
        export(&o).unwrap();
        let got = run(&mut session(&out.join("model.onnx")), &px)
            .remove("logits")
            .unwrap();
        match &base {
            None => base = Some(got),
            Some(b) => assert_eq!(&got, b, "opset {opset}"),
        }
    }
}

#[test]
fn export_config_without_labels_takes_them_from_the_head() {
    let spec = vit_spec();
    let mut cfg = config_json("vit", &spec);
    cfg.as_object_mut().unwrap().remove("id2label");
    let tmp = util::tempdir();
    let ck = tmp.path().join("ck");
    write_checkpoint(&ck, &cfg, &random_hf_tensors("vit", &spec, 4));
    let s = export_ck(&ck, &tmp.path().join("out")).unwrap();
    assert_eq!(s.num_labels, 7);
    let out_cfg =
        vit_batch::vit::VitConfig::from_file(&tmp.path().join("out/config.json")).unwrap();
    assert_eq!(out_cfg.labels().unwrap()[6], "LABEL_6");
}

/// Copy fixtures/hf-parity/timm into `dir`, adding `extra` tensors and editing config.json.
fn timm_variant(
    dir: &Path,
    extra: &[(&str, Vec<usize>)],
    edit: impl FnOnce(&mut serde_json::Value),
) {
    let src = util::fixtures().join("hf-parity/timm");
    std::fs::create_dir_all(dir).unwrap();
    let buf = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&buf).unwrap();
    let zeros: Vec<Vec<u8>> = extra
        .iter()
        .map(|(_, s)| vec![0u8; s.iter().product::<usize>() * 4])
        .collect();
    let mut views = st.tensors();
    for ((n, s), z) in extra.iter().zip(&zeros) {
        views.push((
            n.to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), z).unwrap(),
        ));
    }
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
}

#[test]
fn export_timm_unsupported_features_are_refused() {
    let tmp = util::tempdir();
    let ck = tmp.path().join("fcnorm");
    timm_variant(
        &ck,
        &[("fc_norm.weight", vec![32]), ("fc_norm.bias", vec![32])],
        |_| {},
    );
    let e = export_ck(&ck, &tmp.path().join("o1")).unwrap_err();
    assert!(
        matches!(&e, Error::Checkpoint { what } if what.contains("fc_norm")),
        "{e}"
    );
    let ck = tmp.path().join("ls");
    timm_variant(&ck, &[("blocks.0.ls1.gamma", vec![32])], |_| {});
    let e = export_ck(&ck, &tmp.path().join("o2")).unwrap_err();
    assert!(
        matches!(&e, Error::Checkpoint { what } if what.contains("layer scale")),
        "{e}"
    );
    // Heads cannot be read from weights: without model_args.num_heads, the name decides.
    let ck = tmp.path().join("noheads");
    timm_variant(&ck, &[], |c| {
        c.as_object_mut().unwrap().remove("model_args");
        c["architecture"] = json!("vit_custom_patch8");
    });
    let e = export_ck(&ck, &tmp.path().join("o3")).unwrap_err();
    assert!(
        matches!(&e, Error::Config { what } if what.contains("num_heads")),
        "{e}"
    );
    let ck = tmp.path().join("avgpool");
    timm_variant(&ck, &[], |c| c["global_pool"] = json!("avg"));
    let e = export_ck(&ck, &tmp.path().join("o4")).unwrap_err();
    assert!(
        matches!(&e, Error::Checkpoint { what } if what.contains("global_pool")),
        "{e}"
    );
    // An unknown extra tensor is exported and reported.
    let ck = tmp.path().join("extra");
    timm_variant(&ck, &[("aux_head.weight", vec![2, 32])], |_| {});
    let s = export_ck(&ck, &tmp.path().join("o5")).unwrap();
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert!(s.warnings[0].contains("aux_head.weight"));
}

/// BF16 checkpoints are widened to f32 on export (exactly: bf16 is f32's top half).
#[test]
fn export_bf16_checkpoint_matches_reference() {
    let spec = vit_spec();
    let mut tensors = random_hf_tensors("vit", &spec, 21);
    for (_, v) in tensors.values_mut() {
        for x in v.iter_mut() {
            *x = f32::from_bits(x.to_bits() & 0xffff_0000);
        }
    }
    let tmp = util::tempdir();
    let ck = tmp.path().join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::write(
        ck.join("config.json"),
        serde_json::to_vec(&config_json("vit", &spec)).unwrap(),
    )
    .unwrap();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, (sh, v))| {
            let b = v
                .iter()
                .flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes())
                .collect();
            (k.clone(), sh.clone(), b)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(k, sh, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, sh.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &ck.join("model.safetensors")).unwrap();
    let out = tmp.path().join("out");
    export_ck(&ck, &out).unwrap();
    let rc = RefConfig {
        prefix: "vit",
        image: spec.image,
        patch: spec.patch,
        channels: 3,
        hidden: spec.hidden,
        layers: spec.layers,
        heads: spec.heads,
        eps: spec.eps,
        tanh_gelu: false,
    };
    check_against_reference(&out, &rc, &tensors, spec.labels, false, "bf16");
}
