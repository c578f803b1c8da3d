//! `vit-batch export`: write a ViT classifier as an ONNX model folder.
//!
//! Why it exists: scoring runs ONNX Runtime on `model.onnx`; this module produces that
//! file, plus `config.json` and `preprocessor_config.json`, from a checkpoint folder
//! (HF ViT / DeiT / timm, or what `vit-batch train` writes) or from a seeded random
//! init of a preset. The folder has the same layout as `optimum-cli export onnx`:
//! input `pixel_values` float32 `[batch, 3, H, W]` (dynamic axis `batch`, H = W =
//! `image_size` fixed), output `logits` `[batch, C]`.
//!
//! Output folder policy: the folder is created if missing. An existing folder is
//! written into only when it is empty or already holds a `model.onnx` (a previous
//! export); then `model.onnx`, `config.json` and `preprocessor_config.json` are
//! replaced, each atomically (temporary file in the same folder + rename), and other
//! files are left alone. Anything else (e.g. the checkpoint folder itself) is refused.
//!
//! Submodules: [`graph`] (ONNX builder), [`vit_graph`] (the architecture),
//! [`weights`] (canonical weight set), [`checkpoint`] (folders), [`presets`] (init).

pub mod checkpoint;
pub mod graph;
pub mod presets;
pub mod vit_graph;
pub mod weights;

use std::path::PathBuf;

use vit_graph::GraphOptions;
pub use weights::Tensor;
use weights::{Scheme, VitWeights};

use crate::error::{Error, Result};
use crate::fs::{atomic_write, atomic_write_bytes};
pub use crate::options::{ExportOptions, ExportSource};
use crate::preprocess::PreprocessConfig;
use crate::vit::VitConfig;

/// Which operators the graph uses. The default is the variant measured fastest on
/// ONNX Runtime with logits within 1e-4 of PyTorch: `Fused` (see BENCHMARKS.md,
/// ## Export). Choose `Standard` for other ONNX runtimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GraphVariant {
    /// Default-domain ONNX operators only (runs on any ONNX runtime).
    Standard,
    /// ONNX Runtime `com.microsoft` contrib ops (`Attention`, `BiasGelu`/`FastGelu`):
    /// faster on ONNX Runtime, not loadable by runtimes without those ops.
    #[default]
    Fused,
}

impl GraphVariant {
    /// The variant's name, as `--variant` takes it.
    pub fn as_str(&self) -> &'static str {
        match self {
            GraphVariant::Standard => "standard",
            GraphVariant::Fused => "fused",
        }
    }
}

/// What `export` wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    /// The model folder written.
    pub out_dir: PathBuf,
    /// Its `model.onnx`.
    pub model_path: PathBuf,
    /// Float parameters of the model (PyTorch's count).
    pub num_params: usize,
    /// SHA-256 of the source `model.safetensors` (None for a preset).
    pub source_sha256: Option<String>,
    /// `checkpoint:<path>` or `preset:<name> seed=<seed>`.
    pub source: String,
    /// The graph variant built.
    pub variant: GraphVariant,
    /// Default-domain opset.
    pub opset: i64,
    /// Whether `attentions.{i}` outputs were added.
    pub with_attentions: bool,
    /// Classes of the head.
    pub num_labels: usize,
    /// Size of `model.onnx` in bytes.
    pub model_bytes: u64,
    /// Non-fatal findings, e.g. tensors in the checkpoint that the graph does not use.
    pub warnings: Vec<String>,
}

/// Export according to `opts`. Never panics on bad input: every failure is an [`Error`].
pub fn export(opts: &ExportOptions) -> Result<ExportSummary> {
    opts.validate()?;
    match &opts.source()? {
        ExportSource::Checkpoint(dir) => {
            let ck = checkpoint::Checkpoint::open(dir)?;
            let tensors = ck.tensors()?;
            let (weights, unused) = VitWeights::from_hf_tensors(&ck.config, ck.scheme, &tensors)?;
            let warnings = unused
                .iter()
                .map(|n| {
                    format!("tensor '{n}' in model.safetensors is not used by the exported graph")
                })
                .collect();
            let preprocessor = match &ck.preprocessor {
                Some(bytes) => bytes.clone(),
                None => default_preprocessor(&ck.config, ck.norm_stats.as_ref())?,
            };
            let source = format!("checkpoint:{}", dir.display());
            let meta = vec![
                ("source".to_string(), source.clone()),
                ("source_format".to_string(), format!("{:?}", ck.scheme)),
                ("source_sha256".to_string(), ck.sha256.clone()),
            ];
            write_folder(
                opts,
                &ck.config,
                &weights,
                meta,
                &preprocessor,
                source,
                Some(ck.sha256.clone()),
                warnings,
            )
        }
        ExportSource::Preset {
            name,
            seed,
            num_labels,
        } => {
            let cfg = VitConfig::preset(name, *num_labels)?;
            let tensors = presets::random_init(&cfg, *seed);
            let (weights, unused) = VitWeights::from_hf_tensors(&cfg, Scheme::HfVit, &tensors)?;
            if !unused.is_empty() {
                return Err(Error::Model {
                    what: format!("internal: random init left tensors unused: {unused:?}"),
                });
            }
            let source = format!("preset:{name} seed={seed}");
            let meta = vec![
                ("source".to_string(), source.clone()),
                ("preset".to_string(), name.clone()),
                ("seed".to_string(), seed.to_string()),
            ];
            let pp = default_preprocessor(&cfg, None)?;
            write_folder(opts, &cfg, &weights, meta, &pp, source, None, Vec::new())
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn write_folder(
    opts: &ExportOptions,
    cfg: &VitConfig,
    weights: &VitWeights<'_>,
    mut meta: Vec<(String, String)>,
    preprocessor: &[u8],
    source: String,
    sha: Option<String>,
    warnings: Vec<String>,
) -> Result<ExportSummary> {
    meta.push(("variant".into(), opts.variant.as_str().into()));
    meta.push(("with_attentions".into(), opts.with_attentions.to_string()));
    let gopts = GraphOptions {
        opset: opts.opset,
        with_attentions: opts.with_attentions,
        variant: opts.variant,
        metadata: meta,
    };
    let model = vit_graph::build_vit(cfg, weights, &gopts)?;
    // Only now, with the source read and the graph built, touch the output folder.
    let checkpoint = opts.checkpoint.as_deref().into_iter().collect::<Vec<_>>();
    crate::fs::prepare_owned_dir(&opts.out, "model.onnx", &checkpoint)?;
    let model_path = opts.out.join("model.onnx");
    atomic_write(&model_path, |w| {
        model.write_to(w).map_err(|e| Error::io(&model_path, e))
    })?;
    let model_bytes = std::fs::metadata(&model_path)
        .map_err(|e| Error::io(&model_path, e))?
        .len();
    let mut out_cfg = cfg.clone();
    if out_cfg.architectures.is_none() {
        out_cfg.architectures = Some(vec!["ViTForImageClassification".into()]);
    }
    let cfg_path = opts.out.join("config.json");
    atomic_write_bytes(&cfg_path, out_cfg.to_json().as_bytes())?;
    let pp_path = opts.out.join("preprocessor_config.json");
    atomic_write_bytes(&pp_path, preprocessor)?;
    Ok(ExportSummary {
        out_dir: opts.out.clone(),
        model_path,
        num_params: weights.num_params(),
        source_sha256: sha,
        source,
        variant: opts.variant,
        opset: opts.opset,
        with_attentions: opts.with_attentions,
        num_labels: cfg.num_labels(),
        model_bytes,
        warnings,
    })
}

/// ViTImageProcessor defaults for `cfg` (mean/std 0.5 unless `stats` says otherwise),
/// as `preprocessor_config.json` bytes: the one definition of those defaults is
/// [`PreprocessConfig::vit_default`].
fn default_preprocessor(cfg: &VitConfig, stats: Option<&(Vec<f64>, Vec<f64>)>) -> Result<Vec<u8>> {
    let mut p = PreprocessConfig::vit_default(cfg.image_size as u32);
    if let Some((mean, std)) = stats {
        p.image_mean = mean.iter().map(|&v| v as f32).collect();
        p.image_std = std.iter().map(|&v| v as f32).collect();
    }
    Ok(serde_json::to_vec_pretty(&p)?)
}
