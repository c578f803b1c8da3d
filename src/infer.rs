//! Stage 4: run batches through ONNX Runtime.
//!
//! One [`Engine`] owns one `ort` session (`Session::run` takes `&mut self`), so the
//! scoring loop keeps it on its own thread and feeds it ready batches. The model's
//! input is checked against the preprocessing before any image is read.

use std::path::Path;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};
use serde::Serialize;

use crate::error::{Error, Result};

/// Where ONNX Runtime runs the model.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// ONNX Runtime's CPU execution provider.
    #[default]
    Cpu,
    /// NVIDIA GPUs (needs the onnxruntime-gpu library: `scripts/setup --gpu`).
    Cuda,
    /// Intel's OpenVINO on the CPU, through ONNX Runtime's plugin-EP API (needs the
    /// onnxruntime-ep-openvino plugin: `scripts/setup --openvino`).
    Openvino,
}

impl Provider {
    /// Its name as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::Openvino => "openvino",
        }
    }
}

/// The arithmetic inference runs in.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32 throughout: the model as exported (the default: an evaluation stays
    /// faithful unless asked otherwise).
    #[default]
    Fp32,
    /// bfloat16 matrix arithmetic (OpenVINO's `INFERENCE_PRECISION_HINT` bf16): needs
    /// `--provider openvino` and a CPU with AVX512-BF16 or AMX; logits move by ~1e-2.
    Bf16,
}

impl Precision {
    /// Its name as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }

    /// OpenVINO's name for it (`INFERENCE_PRECISION_HINT`).
    fn openvino_hint(self) -> &'static str {
        match self {
            Precision::Fp32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// What ran the model, recorded in `metrics.json` beside the provider.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
pub struct EngineInfo {
    /// The OpenVINO plugin and runtime, for `provider = openvino`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openvino: Option<crate::runtime::OpenVinoInfo>,
    /// The CPU and its relevant instruction-set flags.
    #[serde(default)]
    pub cpu: crate::runtime::CpuInfo,
}

/// `provider precision (plugin ...)`, for report headers and `compare`.
pub fn engine_summary(provider: Provider, precision: Precision, engine: &EngineInfo) -> String {
    match &engine.openvino {
        Some(ov) => format!(
            "{} {} (OpenVINO EP {}, OpenVINO {})",
            provider.name(),
            precision.name(),
            ov.plugin_version,
            ov.openvino_version
        ),
        None => format!("{} {}", provider.name(), precision.name()),
    }
}

#[derive(Debug, Clone)]
pub(crate) struct EngineOptions {
    pub provider: Provider,
    pub precision: Precision,
    /// The OpenVINO plugin library (else `VIT_BATCH_OPENVINO_LIB`, else `.ort/`).
    pub openvino_lib: Option<std::path::PathBuf>,
    /// Intra-op threads for ONNX Runtime.
    pub intra_threads: usize,
    /// Let idle intra-op threads spin between operators (ONNX Runtime's default):
    /// faster hand-offs, at the cost of CPU time that decoding could use.
    pub spinning: bool,
    /// Stop a batch whose inference takes longer than this ([`Error::BatchTimeout`]).
    pub timeout: Option<std::time::Duration>,
}

/// What the model's graph says about its input and output.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ModelIo {
    pub input_name: String,
    pub output_name: String,
    /// Fixed batch size, when the model's batch axis is not dynamic.
    pub fixed_batch: Option<usize>,
    pub channels: Option<usize>,
    pub height: Option<usize>,
    pub width: Option<usize>,
    pub num_classes: Option<usize>,
    pub producer: Option<String>,
    /// Attention outputs (`attentions.{i}` from `export --with-attentions`), in layer
    /// order, with their head and token counts; empty for a plain model.
    pub attentions: Vec<String>,
    pub attention_heads: Option<usize>,
    pub attention_tokens: Option<usize>,
}

/// What one batch gave back.
pub(crate) struct BatchOutput {
    /// `n * classes` logits.
    pub logits: Vec<f32>,
    pub classes: usize,
    /// `n * tokens` values: each image's [CLS] attention-rollout row (see
    /// [`crate::attention`]), when the model returns attentions.
    pub rollout: Option<Vec<f32>>,
}

pub(crate) struct Engine {
    session: Session,
    pub io: ModelIo,
    pub provider: Provider,
    pub precision: Precision,
    pub info: EngineInfo,
    timeout: Option<std::time::Duration>,
}

fn dim(d: i64) -> Option<usize> {
    (d > 0).then_some(d as usize)
}

impl Engine {
    pub(crate) fn open(onnx: &Path, opts: &EngineOptions) -> Result<Self> {
        let env = crate::runtime::environment()?;
        let model_err = |e: String| Error::Model {
            what: format!("{}: {e}", onnx.display()),
        };
        let mut builder = Session::builder(env)
            .map_err(|e| Error::Runtime {
                what: e.to_string(),
            })?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| Error::Runtime {
                what: e.to_string(),
            })?
            .with_intra_threads(opts.intra_threads.max(1))
            .map_err(|e| Error::Runtime {
                what: e.to_string(),
            })?
            .with_intra_op_spinning(opts.spinning)
            .map_err(|e| Error::Runtime {
                what: e.to_string(),
            })?;
        let cpu = crate::runtime::CpuInfo::detect();
        check_precision(opts, &cpu)?;
        let mut openvino = None;
        if opts.provider == Provider::Openvino {
            let ov = crate::runtime::register_openvino(opts.openvino_lib.as_deref())?;
            openvino = Some(ov.clone());
            // Precision and threads, set every time: the plugin's own default on an
            // AMX machine is bf16, which a user who did not ask for it must not get.
            let load_config = serde_json::json!({
                "CPU": {
                    "INFERENCE_PRECISION_HINT": opts.precision.openvino_hint(),
                    "INFERENCE_NUM_THREADS": opts.intra_threads.max(1).to_string(),
                }
            });
            let ep = crate::runtime::OPENVINO_EP_NAME;
            let options = vec![(format!("{ep}.load_config"), load_config.to_string())];
            let devices = crate::runtime::openvino_cpu_devices(env);
            builder = builder
                // Every node on OpenVINO or none: a node it cannot run is an error,
                // not a silent trip to ONNX Runtime's CPU provider.
                .with_config_entry("session.disable_cpu_ep_fallback", "1")
                .map_err(|e| Error::Runtime {
                    what: e.to_string(),
                })?
                .with_devices(devices, Some(&options))
                .map_err(|e| Error::Runtime {
                    what: format!(
                        "provider openvino: cannot append the OpenVINO execution provider: {e}"
                    ),
                })?;
        }
        if opts.provider == Provider::Cuda {
            use ort::ep::ExecutionProvider;
            let available = ort::ep::CUDA::is_available().unwrap_or(false);
            if !available {
                return Err(Error::Runtime {
                    what: format!(
                        "provider cuda: this ONNX Runtime library has no CUDA execution provider (it is the CPU build). Install the GPU build with `scripts/setup --gpu` and pass {} .ort/{v}-gpu/libonnxruntime.so.{v}",
                        crate::error::option_name("ort_lib"),
                        v = crate::runtime::PINNED_ORT_VERSION
                    ),
                });
            }
            builder = builder
                .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
                .map_err(|e| Error::Runtime {
                    what: format!(
                        "provider cuda: the CUDA execution provider failed to register: {e}"
                    ),
                })?;
        }
        // From the file, not from memory: ONNX Runtime then resolves external-data
        // files (`model.onnx_data`) against the model's folder, never against the
        // current directory (`ModelBundle::open` has checked that they are there).
        let session = builder.commit_from_file(onnx).map_err(|e| {
            if opts.provider == Provider::Openvino {
                Error::Runtime {
                    what: format!(
                        "provider openvino: {} cannot run on OpenVINO (all of its nodes must; there is no fall-back to another provider): {e}",
                        onnx.display()
                    ),
                }
            } else {
                model_err(format!("not a loadable ONNX model: {e}"))
            }
        })?;
        let io = inspect(&session).map_err(model_err)?;
        Ok(Engine {
            session,
            io,
            provider: opts.provider,
            precision: opts.precision,
            info: EngineInfo { openvino, cpu },
            timeout: opts.timeout,
        })
    }

    /// Check the model's input against the tensor the preprocessing makes.
    pub(crate) fn check_input(&self, height: u32, width: u32) -> Result<()> {
        let io = &self.io;
        let mismatch = |what: &str, m: Option<usize>, p: usize| {
            match m {
            Some(m) if m != p => Err(Error::Model {
                what: format!(
                    "model input '{}' expects {what} {m}, but the preprocessing produces {p} (check preprocessor_config.json)",
                    io.input_name
                ),
            }),
            _ => Ok(()),
        }
        };
        mismatch("channels", io.channels, 3)?;
        mismatch("height", io.height, height as usize)?;
        mismatch("width", io.width, width as usize)?;
        Ok(())
    }

    /// Run `n` images (`input` holds n * 3 * h * w values) and return the logits
    /// (and the attention rollout, for a model with attention outputs). A fixed batch
    /// axis is honoured by padding.
    pub(crate) fn run(
        &mut self,
        input: &[f32],
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<BatchOutput> {
        let per = 3 * h * w;
        let run_n = self.io.fixed_batch.unwrap_or(n).max(n);
        let padded;
        let data: &[f32] = if run_n > n {
            let mut v = Vec::new();
            v.try_reserve_exact(run_n * per).map_err(|_| Error::Model {
                what: format!(
                    "cannot allocate {} bytes to pad a batch to the model's fixed batch axis of {run_n}",
                    (run_n * per) as u64 * 4
                ),
            })?;
            v.extend_from_slice(&input[..n * per]);
            v.resize(run_n * per, 0.0);
            padded = v;
            &padded
        } else {
            &input[..n * per]
        };
        let tensor = TensorRef::from_array_view(([run_n, 3, h, w], data))?;
        // A watchdog thread stops this run (ONNX Runtime's terminate flag, checked
        // between nodes, loop bodies included) when it outlives the timeout.
        let run_options = std::sync::Arc::new(ort::session::RunOptions::new()?);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let watchdog = self.timeout.map(|t| {
            let ro = std::sync::Arc::clone(&run_options);
            std::thread::spawn(move || {
                let late = matches!(
                    done_rx.recv_timeout(t),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                );
                late && ro.terminate().is_ok()
            })
        });
        let result = self.session.run_with_options(
            ort::inputs![self.io.input_name.as_str() => tensor],
            &*run_options,
        );
        drop(done_tx);
        let stopped = watchdog.is_some_and(|w| w.join().unwrap_or(false));
        if stopped {
            drop(result);
            return Err(Error::BatchTimeout {
                seconds: self.timeout.map_or(0, |t| t.as_secs()),
                start: 0,
                end: n,
                parts: Default::default(),
            });
        }
        let outputs = result?;
        let out = &outputs[self.io.output_name.as_str()];
        let (shape, values) = out.try_extract_tensor::<f32>()?;
        if shape.len() != 2 || shape[0] as usize != run_n {
            return Err(Error::Model {
                what: format!(
                    "output '{}' has shape {:?}, expected [batch, classes]",
                    self.io.output_name,
                    &shape[..]
                ),
            });
        }
        let c = shape[1] as usize;
        let logits = values[..n * c].to_vec();
        let rollout = if self.io.attentions.is_empty() {
            None
        } else {
            let mut layers = Vec::with_capacity(self.io.attentions.len());
            for name in &self.io.attentions {
                let (shape, values) = outputs[name.as_str()].try_extract_tensor::<f32>()?;
                if shape.len() != 4 || shape[0] as usize != run_n || shape[2] != shape[3] {
                    return Err(Error::Model {
                        what: format!(
                            "attention output '{name}' has shape {:?}, expected [batch, heads, tokens, tokens]",
                            &shape[..]
                        ),
                    });
                }
                layers.push((shape[1] as usize, shape[2] as usize, values));
            }
            let (heads, tokens, _) = layers[0];
            if layers.iter().any(|&(hh, t, _)| (hh, t) != (heads, tokens)) {
                return Err(Error::Model {
                    what: "attention outputs differ in heads or tokens between layers".into(),
                });
            }
            let per = heads * tokens * tokens;
            let mut out = Vec::with_capacity(n * tokens);
            for i in 0..n {
                let views: Vec<&[f32]> = layers
                    .iter()
                    .map(|(_, _, v)| &v[i * per..(i + 1) * per])
                    .collect();
                out.extend(crate::attention::cls_rollout(&views, heads, tokens));
            }
            Some(out)
        };
        Ok(BatchOutput {
            logits,
            classes: c,
            rollout,
        })
    }
}

/// bf16 runs only where it is real: on OpenVINO (ONNX Runtime's CPU and CUDA
/// providers run an fp32 graph in fp32) and on a CPU with bf16 arithmetic (elsewhere
/// OpenVINO would quietly compute in fp32 and the run would be mislabelled).
fn check_precision(opts: &EngineOptions, cpu: &crate::runtime::CpuInfo) -> Result<()> {
    if opts.precision != Precision::Bf16 {
        return Ok(());
    }
    if opts.provider != Provider::Openvino {
        return Err(Error::InvalidOption {
            option: "precision",
            what: format!(
                "bf16 needs {} openvino (the {} provider runs this fp32 model in fp32)",
                crate::error::option_name("provider"),
                opts.provider.name()
            ),
        });
    }
    if !cpu.has_bf16() {
        return Err(Error::InvalidOption {
            option: "precision",
            what: format!(
                "bf16: this CPU ({}) has neither avx512_bf16 nor amx_bf16, so OpenVINO would compute in fp32; use {} fp32",
                cpu.summary(),
                crate::error::option_name("precision")
            ),
        });
    }
    Ok(())
}

fn inspect(session: &Session) -> Result<ModelIo, String> {
    let inputs = session.inputs();
    if inputs.len() != 1 {
        return Err(format!(
            "expected exactly one input (pixel_values), found {}: {}",
            inputs.len(),
            inputs
                .iter()
                .map(|i| i.name())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let input = &inputs[0];
    let ValueType::Tensor { ty, shape, .. } = input.dtype() else {
        return Err(format!("input '{}' is not a tensor", input.name()));
    };
    if *ty != TensorElementType::Float32 {
        return Err(format!(
            "input '{}' has dtype {ty:?}; vit-batch feeds float32 pixel values",
            input.name()
        ));
    }
    if shape.len() != 4 {
        return Err(format!(
            "input '{}' has rank {} (shape {:?}); expected [batch, 3, height, width]",
            input.name(),
            shape.len(),
            &shape[..]
        ));
    }
    let outputs = session.outputs();
    let output = outputs
        .iter()
        .find(|o| o.name() == "logits")
        .or_else(|| outputs.first())
        .ok_or("model has no output")?;
    let num_classes = match output.dtype() {
        ValueType::Tensor { ty, shape, .. } => {
            if *ty != TensorElementType::Float32 {
                return Err(format!(
                    "output '{}' has dtype {ty:?}; expected float32 logits",
                    output.name()
                ));
            }
            if shape.len() != 2 {
                return Err(format!(
                    "output '{}' has rank {}; expected [batch, classes]",
                    output.name(),
                    shape.len()
                ));
            }
            dim(shape[1])
        }
        _ => return Err(format!("output '{}' is not a tensor", output.name())),
    };
    let producer = session.metadata().ok().and_then(|m| m.producer());
    // `attentions.{i}`, ordered by layer index.
    let mut attn: Vec<(usize, String, Option<usize>, Option<usize>)> = outputs
        .iter()
        .filter_map(|o| {
            let i = o.name().strip_prefix("attentions.")?.parse().ok()?;
            let ValueType::Tensor { shape, .. } = o.dtype() else {
                return None;
            };
            (shape.len() == 4).then(|| (i, o.name().to_string(), dim(shape[1]), dim(shape[2])))
        })
        .collect();
    attn.sort();
    Ok(ModelIo {
        attention_heads: attn.first().and_then(|a| a.2),
        attention_tokens: attn.first().and_then(|a| a.3),
        attentions: attn.into_iter().map(|a| a.1).collect(),
        input_name: input.name().to_string(),
        output_name: output.name().to_string(),
        fixed_batch: dim(shape[0]),
        channels: dim(shape[1]),
        height: dim(shape[2]),
        width: dim(shape[3]),
        num_classes,
        producer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::CpuInfo;

    fn opts(provider: Provider, precision: Precision) -> EngineOptions {
        EngineOptions {
            provider,
            precision,
            openvino_lib: None,
            intra_threads: 1,
            spinning: true,
            timeout: None,
        }
    }

    #[test]
    fn bf16_needs_openvino_and_a_bf16_cpu() {
        let zen3 = CpuInfo::parse("model name : AMD EPYC 7B13\nflags : avx avx2 fma\n");
        let xeon = CpuInfo::parse("model name : Intel Xeon\nflags : avx2 avx512f avx512_bf16\n");
        let amx = CpuInfo::parse("model name : Intel Xeon\nflags : avx2 amx_bf16 amx_tile\n");
        for p in [Provider::Cpu, Provider::Cuda, Provider::Openvino] {
            assert!(check_precision(&opts(p, Precision::Fp32), &zen3).is_ok());
        }
        let msg = check_precision(&opts(Provider::Openvino, Precision::Bf16), &zen3)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("neither avx512_bf16 nor amx_bf16") && msg.contains("AMD EPYC 7B13"),
            "{msg}"
        );
        assert!(check_precision(&opts(Provider::Openvino, Precision::Bf16), &xeon).is_ok());
        assert!(check_precision(&opts(Provider::Openvino, Precision::Bf16), &amx).is_ok());
        let msg = check_precision(&opts(Provider::Cpu, Precision::Bf16), &xeon)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("needs --provider"), "{msg}");
    }

    #[test]
    fn engine_summary_names_the_plugin_versions() {
        let mut e = EngineInfo::default();
        assert_eq!(
            engine_summary(Provider::Cpu, Precision::Fp32, &e),
            "cpu fp32"
        );
        e.openvino = Some(crate::runtime::OpenVinoInfo {
            plugin: "/x/plugin.so".into(),
            plugin_version: "1.8.1".into(),
            openvino_version: "2026.4.1-22982".into(),
        });
        assert_eq!(
            engine_summary(Provider::Openvino, Precision::Bf16, &e),
            "openvino bf16 (OpenVINO EP 1.8.1, OpenVINO 2026.4.1-22982)"
        );
    }
}
