//! `vit-batch train`: train a small ViT classifier on an ImageFolder dataset, on CPU.
//!
//! Why it exists: the project needs a real trained model to test scoring against (the
//! bundled `fixtures/models/vit-digits/`), and users with a small labelled folder can
//! get a baseline without Python. Training uses candle (autodiff + AdamW); no backprop
//! is written by hand here. The saved folder (`config.json`, `model.safetensors`,
//! `preprocessor_config.json`, plus `training_log.json`) is a Hugging Face checkpoint
//! that `vit-batch export` (and transformers) read.
//!
//! This module is the run: [`train`] loads the data (`data`: the ImageFolder decoded
//! into tensors, the split, the augmentation), builds the model (`model`: HF's
//! `ViTForImageClassification` in candle) and its two AdamW optimisers (weight decay on
//! matrices only), runs the epochs (linear warm-up then cosine decay of the learning
//! rate), and writes the checkpoint, each file atomically ([`crate::fs`]). It reports
//! through [`Progress`] and never prints.
//!
//! Determinism: parameter init ([`crate::vit::init_weights`]), the split and per-epoch
//! shuffling and shifts come from seeded `StdRng`s, so a run is reproducible for a
//! given seed and build. candle's CPU kernels may split reductions differently with
//! another number of threads, which could change the last bits and then the
//! trajectory; pin the thread count to be safe.
//!
//! Threads: the training computes inside a rayon pool of its own with `threads`
//! threads (default: candle's count, `RAYON_NUM_THREADS` else the physical cores), which
//! bounds candle's matmuls (gemm runs on the current rayon pool). The library sets no
//! environment variable, and two things candle reads from the process environment
//! stay out of its reach: the number of parts candle splits a matmul into (its own
//! count: with fewer parts than `threads`, fewer threads work) and candle's separate
//! pool for large elementwise ops (sized once per process from `CANDLE_NUM_THREADS` /
//! `RAYON_NUM_THREADS`, else the physical cores). [`TrainSummary`] records the
//! elementwise pool's size and `train` warns when candle's counts differ from the
//! `threads` asked; `RAYON_NUM_THREADS` set when the process starts bounds them too
//! (the binary sets it from `--threads` before anything runs).

mod data;
mod model;

use std::f64::consts::PI;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::fs::atomic_write_bytes;
use crate::preprocess::{PreprocessConfig, Preprocessor};
use crate::progress::Progress;
use crate::vit::VitConfig;
use data::{Augment, Data, Split};

pub use crate::options::TrainOptions;
pub use data::Unreadable;
pub use model::{load_checkpoint, VitForImageClassification};

/// Loss and accuracy of one epoch.
#[derive(Debug, Clone, Serialize)]
pub struct EpochStats {
    /// 1-based.
    pub epoch: usize,
    /// Mean cross-entropy over the epoch's training batches (weighted by batch size).
    pub train_loss: f64,
    /// Training accuracy over the epoch (on the augmented batches, as seen in training).
    pub train_accuracy: f64,
    /// Mean cross-entropy on the validation set after the epoch (none without one).
    pub val_loss: Option<f64>,
    /// Top-1 accuracy on the validation set after the epoch (none without one).
    pub val_accuracy: Option<f64>,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Wall time of the epoch, validation included.
    pub seconds: f64,
}

/// What `train` did (also written to the checkpoint's `training_log.json`).
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    /// The checkpoint folder written.
    pub out_dir: PathBuf,
    /// The architecture preset trained.
    pub preset: String,
    /// Class names, index = class id (the sorted class folder names).
    pub classes: Vec<String>,
    /// Training images.
    pub num_train: usize,
    /// Validation images.
    pub num_val: usize,
    /// Trainable parameters (scalars).
    pub num_params: usize,
    /// Optimisation steps taken.
    pub steps: usize,
    /// Per-epoch statistics, in order.
    pub epochs: Vec<EpochStats>,
    /// Images skipped because they could not be read or decoded.
    pub unreadable: Vec<Unreadable>,
    /// Files in the data folder(s) that are not images (counted, not used).
    pub skipped_files: usize,
    /// Threads of the pool the training computed in (the `threads` option, else
    /// candle's count): the bound of candle's matmuls.
    pub threads: usize,
    /// Threads of candle's own pool for large elementwise ops, which `threads` does not
    /// reach (see the module comment).
    pub elementwise_threads: usize,
    /// The seed of the run.
    pub seed: u64,
    /// Wall time of the whole run, in seconds.
    pub wall_s: f64,
}

impl TrainSummary {
    /// Validation accuracy after the last epoch (none without a validation set).
    pub fn final_val_accuracy(&self) -> Option<f64> {
        self.epochs.last().and_then(|e| e.val_accuracy)
    }
}

pub(crate) fn terr(what: impl Into<String>) -> Error {
    Error::Train { what: what.into() }
}

/// Train according to `opts` and write the checkpoint folder. Bad input (no images,
/// one class, an empty class folder, bad numbers) is an [`Error`], never a panic, and
/// nothing is written then.
pub fn train(opts: &TrainOptions, progress: &mut dyn Progress) -> Result<TrainSummary> {
    let t0 = Instant::now();
    opts.validate()?;
    // The architecture (labels filled in below); fails early on an unknown preset.
    let side = VitConfig::preset(&opts.preset, 2)?.image_size;
    let pp_cfg = PreprocessConfig::vit_default(side as u32);
    let pre = Preprocessor::new(pp_cfg.clone())?;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let data = data::load(opts, &pre, &mut rng)?;
    let mut cfg = VitConfig::preset(&opts.preset, data.classes.len())?;
    cfg.set_labels(&data.classes);
    cfg.validate()?;

    let threads = Threads::new(opts.threads)?;
    let mut trainer = Trainer::new(&cfg, rng.random(), opts)?;
    let schedule = Schedule::new(opts, data.train.len());
    announce(opts, &data, &trainer, &schedule, &threads, progress);
    let augment = Augment::new(opts.augment_shift, &pp_cfg);
    let epochs = run_epochs(
        &mut trainer,
        &data,
        &schedule,
        &augment,
        &threads,
        &mut rng,
        progress,
    )?;

    write_checkpoint(opts, &cfg, &pp_cfg, &trainer.varmap)?;
    let summary = TrainSummary {
        out_dir: opts.out.clone(),
        preset: opts.preset.clone(),
        classes: data.classes,
        num_train: data.train.len(),
        num_val: data.val.len(),
        num_params: trainer.num_params,
        steps: trainer.steps,
        epochs,
        unreadable: data.unreadable,
        skipped_files: data.skipped,
        threads: threads.threads,
        elementwise_threads: threads.elementwise,
        seed: opts.seed,
        wall_s: t0.elapsed().as_secs_f64(),
    };
    atomic_write_bytes(
        &opts.out.join("training_log.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    Ok(summary)
}

/// The threads training computes on (see the module comment).
struct Threads {
    pool: rayon::ThreadPool,
    /// Threads of `pool`.
    threads: usize,
    /// candle's own count: how many parts it splits a matmul into.
    candle: usize,
    /// Threads of candle's elementwise pool (its workers and the calling thread).
    elementwise: usize,
}

impl Threads {
    fn new(asked: Option<usize>) -> Result<Self> {
        let candle = candle_core::utils::get_num_threads();
        let threads = asked.unwrap_or(candle);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("vit-batch-train-{i}"))
            .build()
            .map_err(|e| terr(format!("cannot start {threads} training thread(s): {e}")))?;
        Ok(Threads {
            pool,
            threads,
            candle,
            elementwise: candle_core::utils::barrier_pool().n_workers() + 1,
        })
    }

    /// Why the threads used are not the `threads` option, if they are not.
    fn mismatch(&self, asked: Option<usize>) -> Option<String> {
        let t = asked?;
        if self.elementwise == t && self.candle >= t {
            return None;
        }
        Some(format!(
            "threads = {t}: matmuls run on up to {} of them, large elementwise ops on {} \
             thread(s) of candle's own pool; candle sizes both from its own thread count \
             ({}: CANDLE_NUM_THREADS / RAYON_NUM_THREADS, else the physical cores), read \
             from the process environment; start the process with RAYON_NUM_THREADS={t} \
             to use exactly {t}",
            t.min(self.candle),
            self.elementwise,
            self.candle
        ))
    }
}

/// The learning-rate schedule and the run's length.
struct Schedule {
    epochs: usize,
    batch_size: usize,
    steps_per_epoch: usize,
    total: usize,
    warmup: usize,
    base_lr: f64,
}

impl Schedule {
    fn new(opts: &TrainOptions, num_train: usize) -> Self {
        let steps_per_epoch = num_train.div_ceil(opts.batch_size);
        let total = steps_per_epoch * opts.epochs;
        let warmup = opts
            .warmup_steps
            .unwrap_or((opts.warmup * total as f64).round() as usize)
            .min(total.saturating_sub(1));
        Schedule {
            epochs: opts.epochs,
            batch_size: opts.batch_size,
            steps_per_epoch,
            total,
            warmup,
            base_lr: opts.lr,
        }
    }

    fn lr(&self, step: usize) -> f64 {
        lr_at(step, self.total, self.warmup, self.base_lr)
    }
}

/// Learning rate at `step` (0-based): linear warm-up to `base`, then cosine to 0.
fn lr_at(step: usize, total: usize, warmup: usize, base: f64) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let rest = (total - warmup).max(1) as f64;
    let t = (step - warmup) as f64 / rest;
    base * 0.5 * (1.0 + (PI * t).cos())
}

/// The model, its variables and its optimisers.
struct Trainer {
    varmap: VarMap,
    model: VitForImageClassification,
    /// AdamW with weight decay, over the matrices.
    decay: AdamW,
    /// AdamW without, over the rest (`model::decays`).
    plain: AdamW,
    num_params: usize,
    /// Steps taken so far.
    steps: usize,
    /// Input images are `side` x `side` pixels, 3 channels.
    side: usize,
}

impl Trainer {
    /// The model for `cfg` with initial weights seeded by `seed`, and its optimisers.
    fn new(cfg: &VitConfig, seed: u64, opts: &TrainOptions) -> Result<Self> {
        let params = model::init_parameters(cfg, seed)?;
        let num_params = params.iter().map(|(_, t)| t.elem_count()).sum();
        let varmap = model::varmap_from(params)?;
        let (decay, plain): (Vec<Var>, Vec<Var>) = {
            let data = varmap.data().lock().map_err(|_| terr("lock poisoned"))?;
            let mut names: Vec<&String> = data.keys().collect();
            names.sort();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for n in names {
                if model::decays(n) {
                    a.push(data[n].clone());
                } else {
                    b.push(data[n].clone());
                }
            }
            (a, b)
        };
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = VitForImageClassification::new(vb, cfg)?;
        let adamw = |vars: Vec<Var>, weight_decay: f64| {
            AdamW::new(
                vars,
                ParamsAdamW {
                    lr: opts.lr,
                    weight_decay,
                    ..Default::default()
                },
            )
        };
        Ok(Trainer {
            decay: adamw(decay, opts.weight_decay)?,
            plain: adamw(plain, 0.0)?,
            varmap,
            model,
            num_params,
            steps: 0,
            side: cfg.image_size,
        })
    }

    /// One optimisation step on images `x` with labels `y` at learning rate `lr`:
    /// the batch's mean loss and predicted classes. A loss that is not finite is
    /// returned without updating anything (the caller stops there).
    fn step(&mut self, x: &Tensor, y: &Tensor, lr: f64) -> Result<(f64, Vec<u32>)> {
        let logits = self.model.forward(x)?;
        let loss = candle_nn::loss::cross_entropy(&logits, y)?;
        let l = loss.to_scalar::<f32>()? as f64;
        if !l.is_finite() {
            return Ok((l, Vec::new()));
        }
        self.decay.set_learning_rate(lr);
        self.plain.set_learning_rate(lr);
        let grads = loss.backward()?;
        self.decay.step(&grads)?;
        self.plain.step(&grads)?;
        self.steps += 1;
        let pred = logits.detach().argmax(D::Minus1)?.to_vec1::<u32>()?;
        Ok((l, pred))
    }
}

/// Say what the run is about to do.
fn announce(
    opts: &TrainOptions,
    data: &Data,
    trainer: &Trainer,
    schedule: &Schedule,
    threads: &Threads,
    progress: &mut dyn Progress,
) {
    progress.note(&format!(
        "train: {} classes, {} train / {} val images, {} unreadable; {} params; \
         {} epochs x {} steps, batch {}, lr {}, {} thread(s)",
        data.classes.len(),
        data.train.len(),
        data.val.len(),
        data.unreadable.len(),
        trainer.num_params,
        opts.epochs,
        schedule.steps_per_epoch,
        opts.batch_size,
        opts.lr,
        threads.threads
    ));
    if let Some(w) = threads.mismatch(opts.threads) {
        progress.warn(&w);
    }
    for u in &data.unreadable {
        progress.note(&format!(
            "  unreadable ({}): {}: {}",
            u.split, u.rel, u.reason
        ));
    }
}

/// Every epoch: a shuffled pass over the training set in batches, then validation.
fn run_epochs(
    trainer: &mut Trainer,
    data: &Data,
    schedule: &Schedule,
    augment: &Augment,
    threads: &Threads,
    rng: &mut StdRng,
    progress: &mut dyn Progress,
) -> Result<Vec<EpochStats>> {
    let side = trainer.side;
    let n = data.train.len();
    progress.start("steps", schedule.total as u64, 0);
    let mut order: Vec<usize> = (0..n).collect();
    let (mut batch, mut ys) = (Vec::new(), Vec::new());
    let mut epochs = Vec::new();
    for epoch in 1..=schedule.epochs {
        let te = Instant::now();
        order.shuffle(rng);
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        let mut lr = schedule.base_lr;
        for chunk in order.chunks(schedule.batch_size) {
            augment.batch(&data.train, chunk, side, rng, &mut batch, &mut ys);
            let x = Tensor::from_slice(&batch, (chunk.len(), 3, side, side), &Device::Cpu)?;
            let y = Tensor::from_slice(&ys, chunk.len(), &Device::Cpu)?;
            let step = trainer.steps;
            lr = schedule.lr(step);
            let (l, pred) = threads.pool.install(|| trainer.step(&x, &y, lr))?;
            if !l.is_finite() {
                return Err(terr(format!(
                    "loss became {l} at epoch {epoch}, step {step}; try a lower lr"
                )));
            }
            loss_sum += l * chunk.len() as f64;
            correct += pred.iter().zip(&ys).filter(|(a, b)| a == b).count();
            progress.advance(1);
        }
        let (val_loss, val_accuracy) = if data.val.len() > 0 {
            let (l, a) = threads
                .pool
                .install(|| evaluate(&trainer.model, &data.val, side, 256))?;
            (Some(l), Some(a))
        } else {
            (None, None)
        };
        let st = EpochStats {
            epoch,
            train_loss: loss_sum / n as f64,
            train_accuracy: correct as f64 / n as f64,
            val_loss,
            val_accuracy,
            lr,
            seconds: te.elapsed().as_secs_f64(),
        };
        progress.note(&epoch_line(&st, schedule.epochs));
        epochs.push(st);
    }
    progress.finish();
    Ok(epochs)
}

/// The line that reports an epoch.
fn epoch_line(st: &EpochStats, epochs: usize) -> String {
    format!(
        "epoch {:>3}/{}: loss {:.4}, train acc {:.2}%{}, lr {:.2e}, {:.1}s",
        st.epoch,
        epochs,
        st.train_loss,
        100.0 * st.train_accuracy,
        match (st.val_loss, st.val_accuracy) {
            (Some(l), Some(a)) => format!(", val loss {l:.4}, val acc {:.2}%", 100.0 * a),
            _ => String::new(),
        },
        st.lr,
        st.seconds
    )
}

/// Mean loss and accuracy of `model` on `split`, in batches of `bs`.
fn evaluate(
    model: &VitForImageClassification,
    split: &Split,
    side: usize,
    bs: usize,
) -> Result<(f64, f64)> {
    let per = 3 * side * side;
    let (mut loss, mut correct) = (0.0f64, 0usize);
    let n = split.len();
    let mut start = 0;
    while start < n {
        let end = (start + bs).min(n);
        let x = Tensor::from_slice(
            &split.pixels[start * per..end * per],
            (end - start, 3, side, side),
            &Device::Cpu,
        )?;
        let y = Tensor::from_slice(&split.labels[start..end], end - start, &Device::Cpu)?;
        let logits = model.forward(&x)?.detach();
        let l = candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()? as f64;
        loss += l * (end - start) as f64;
        let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        correct += pred
            .iter()
            .zip(&split.labels[start..end])
            .filter(|(a, b)| a == b)
            .count();
        start = end;
    }
    Ok((loss / n as f64, correct as f64 / n as f64))
}

/// Prepare the output folder: created if missing; an existing folder must be empty or
/// hold a previous checkpoint (`model.safetensors`), whose files are replaced.
fn prepare_out(out: &Path, data_dir: &Path) -> Result<()> {
    if let (Ok(a), Ok(b)) = (out.canonicalize(), data_dir.canonicalize()) {
        if a == b || a.starts_with(&b) {
            return Err(Error::Output {
                what: format!(
                    "refusing to write the checkpoint inside the data folder ({})",
                    out.display()
                ),
            });
        }
    }
    if out.exists() {
        if !out.is_dir() {
            return Err(Error::Output {
                what: format!("{} exists and is not a folder", out.display()),
            });
        }
        let empty = std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_none();
        if !empty && !out.join("model.safetensors").exists() {
            return Err(Error::Output {
                what: format!(
                    "{} is not empty and holds no model.safetensors from a previous run; \
                     choose an empty or new folder",
                    out.display()
                ),
            });
        }
    } else {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    Ok(())
}

/// Write the HF checkpoint files (weights, config, preprocessor config) into
/// `opts.out`, each atomically; `training_log.json` follows once the summary is made.
fn write_checkpoint(
    opts: &TrainOptions,
    cfg: &VitConfig,
    pp_cfg: &PreprocessConfig,
    varmap: &VarMap,
) -> Result<()> {
    prepare_out(&opts.out, &opts.data_dir)?;
    let st_path = opts.out.join("model.safetensors");
    let bytes = {
        let vars = varmap.data().lock().map_err(|_| terr("lock poisoned"))?;
        // What candle's `VarMap::save` writes, as bytes (the same serializer).
        safetensors::serialize(vars.iter().map(|(k, v)| (k, v.as_tensor())), None).map_err(|e| {
            Error::Output {
                what: format!("{}: {e}", st_path.display()),
            }
        })?
    };
    atomic_write_bytes(&st_path, &bytes)?;
    atomic_write_bytes(&opts.out.join("config.json"), cfg.to_json().as_bytes())?;
    atomic_write_bytes(
        &opts.out.join("preprocessor_config.json"),
        serde_json::to_string_pretty(pp_cfg)?.as_bytes(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_weights_are_the_bytes_candle_saves() {
        let cfg = VitConfig::preset("vit-micro", 3).unwrap();
        let vm = model::varmap_from(model::init_parameters(&cfg, 1).unwrap()).unwrap();
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let opts = TrainOptions::new(d.path().join("data"), "vit-micro", &out);
        let pp = PreprocessConfig::vit_default(32);
        write_checkpoint(&opts, &cfg, &pp, &vm).unwrap();
        let theirs = d.path().join("candle.safetensors");
        vm.save(&theirs).unwrap();
        let ours = std::fs::read(out.join("model.safetensors")).unwrap();
        assert_eq!(ours, std::fs::read(&theirs).unwrap());
        let back = VitConfig::from_file(&out.join("config.json")).unwrap();
        assert_eq!(back, cfg);
        let pp_back = PreprocessConfig::from_file(&out.join("preprocessor_config.json")).unwrap();
        assert_eq!(pp_back, pp);
        let mut names: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "config.json",
                "model.safetensors",
                "preprocessor_config.json"
            ],
            "no temporary file is left"
        );
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((lr_at(0, 100, 10, 1.0) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 100, 10, 1.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 100, 10, 1.0) - 1.0).abs() < 1e-12);
        assert!(lr_at(99, 100, 10, 1.0) < 0.01);
        assert!(lr_at(55, 100, 10, 1.0) < lr_at(30, 100, 10, 1.0));
    }
}
