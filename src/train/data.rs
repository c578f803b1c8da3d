//! Training data: an ImageFolder decoded into tensors, split, and augmented.
//!
//! Why it exists: what the model is trained on must be exactly what it is scored on,
//! so images go through the same walk ([`crate::walk`]) and preprocessing
//! ([`crate::preprocess`], `PreprocessConfig::vit_default(image_size)`) as `score`.
//! Every tensor is decoded once and kept in memory (meant for small datasets such as
//! the digits). The validation set is a seeded stratified split of the training folder
//! or a folder of its own; the only augmentation is a random shift of a few pixels.
//! Bad datasets (one class, an empty class folder, a class with no readable image, a
//! validation class the training data lacks) are errors, unreadable images are skipped
//! and reported.

use std::collections::BTreeMap;
use std::path::Path;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;

use super::{terr, TrainOptions};
use crate::error::Result;
use crate::preprocess::{PreprocessConfig, Preprocessor};
use crate::walk;

/// An image that could not be used, with the reason.
#[derive(Debug, Clone, Serialize)]
pub struct Unreadable {
    /// Path relative to its data folder (`class/.../file`).
    pub rel: String,
    /// Why it was skipped (the walk's or the decoder's message).
    pub reason: String,
    /// `train` or `val`.
    pub split: String,
}

/// Decoded images of one split: CHW tensors back to back, labels by index.
pub(crate) struct Split {
    pub(crate) pixels: Vec<f32>,
    pub(crate) labels: Vec<u32>,
}

impl Split {
    pub(crate) fn len(&self) -> usize {
        self.labels.len()
    }
}

/// The data of a training run.
pub(crate) struct Data {
    /// Class names, index = class id (the sorted class folder names).
    pub(crate) classes: Vec<String>,
    pub(crate) train: Split,
    pub(crate) val: Split,
    pub(crate) unreadable: Vec<Unreadable>,
    /// Files of the data folder(s) that are not images.
    pub(crate) skipped: usize,
}

/// Load `opts.data_dir` (and `opts.val`), check it can train a classifier, and split
/// it: a stratified split drawn from `rng` unless a validation folder is given.
pub(crate) fn load(opts: &TrainOptions, pre: &Preprocessor, rng: &mut StdRng) -> Result<Data> {
    let (classes, train_loaded) =
        load_folder(&opts.data_dir, None, opts.limit_per_class, pre, "train")?;
    if classes.len() < 2 {
        return Err(terr(format!(
            "{}: found {} class folder(s) ({}); a classifier needs at least 2",
            opts.data_dir.display(),
            classes.len(),
            classes.join(", ")
        )));
    }
    let mut unreadable = train_loaded.unreadable;
    let mut skipped = train_loaded.skipped;
    let items = train_loaded.items;
    for (ci, c) in classes.iter().enumerate() {
        if !items.iter().any(|it| it.1 == ci as u32) {
            return Err(terr(format!(
                "class '{c}' has no readable image ({} unreadable)",
                unreadable
                    .iter()
                    .filter(|u| u.rel.starts_with(&format!("{c}/")))
                    .count()
            )));
        }
    }
    let (train, val) = match &opts.val {
        None => {
            let labels: Vec<u32> = items.iter().map(|it| it.1).collect();
            let (tr, va) = stratified(&labels, opts.val_split, rng);
            (to_split(&items, &tr), to_split(&items, &va))
        }
        Some(dir) => {
            let (_, vl) = load_folder(dir, Some(&classes), None, pre, "val")?;
            unreadable.extend(vl.unreadable);
            skipped += vl.skipped;
            let all: Vec<usize> = (0..items.len()).collect();
            let vidx: Vec<usize> = (0..vl.items.len()).collect();
            (to_split(&items, &all), to_split(&vl.items, &vidx))
        }
    };
    Ok(Data {
        classes,
        train,
        val,
        unreadable,
        skipped,
    })
}

/// One folder, decoded.
struct Loaded {
    /// (rel, class id, tensor) of each readable image.
    items: Vec<(String, u32, Vec<f32>)>,
    unreadable: Vec<Unreadable>,
    skipped: usize,
}

/// Walk and decode `dir`. Class ids are the positions in `classes` when given (a
/// validation folder, whose classes must be among them), else in the folder's own
/// sorted class list, which is returned.
fn load_folder(
    dir: &Path,
    classes: Option<&[String]>,
    limit_per_class: Option<usize>,
    pre: &Preprocessor,
    split: &str,
) -> Result<(Vec<String>, Loaded)> {
    let ds = walk::walk(dir, false)?;
    if !ds.empty_classes.is_empty() {
        return Err(terr(format!(
            "{}: class folder(s) with no image: {} (remove them or add images; every class \
             folder is a class of the model)",
            dir.display(),
            ds.empty_classes.join(", ")
        )));
    }
    let class_ids: BTreeMap<String, u32> = classes
        .unwrap_or(ds.classes.as_slice())
        .iter()
        .enumerate()
        .map(|(i, c)| (c.clone(), i as u32))
        .collect();
    if let Some(cs) = classes {
        let extra: Vec<&str> = ds
            .classes
            .iter()
            .filter(|c| !cs.contains(c))
            .map(|s| s.as_str())
            .collect();
        if !extra.is_empty() {
            return Err(terr(format!(
                "{}: validation class folder(s) not in the training data: {}",
                dir.display(),
                extra.join(", ")
            )));
        }
    }
    let mut per_class: BTreeMap<&str, usize> = BTreeMap::new();
    let mut loaded = Loaded {
        items: Vec::new(),
        unreadable: Vec::new(),
        skipped: ds.skipped.len(),
    };
    for e in &ds.entries {
        let n = per_class.entry(&*e.class).or_default();
        if limit_per_class.is_some_and(|l| *n >= l) {
            continue;
        }
        *n += 1;
        let res = match &e.problem {
            Some(p) => Err(p.clone()),
            None => pre.load(&e.path),
        };
        match res {
            Ok(t) => loaded.items.push((e.rel.clone(), class_ids[&*e.class], t)),
            Err(reason) => loaded.unreadable.push(Unreadable {
                rel: e.rel.clone(),
                reason,
                split: split.into(),
            }),
        }
    }
    Ok((ds.classes, loaded))
}

fn to_split(items: &[(String, u32, Vec<f32>)], idx: &[usize]) -> Split {
    let mut s = Split {
        pixels: Vec::new(),
        labels: Vec::new(),
    };
    for &i in idx {
        s.pixels.extend_from_slice(&items[i].2);
        s.labels.push(items[i].1);
    }
    s
}

/// Stratified split: per class, a seeded shuffle, then `round(frac * n)` held out
/// (at least one when `frac > 0`, never the class's last image).
fn stratified(labels: &[u32], frac: f64, rng: &mut StdRng) -> (Vec<usize>, Vec<usize>) {
    let mut by_class: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, l) in labels.iter().enumerate() {
        by_class.entry(*l).or_default().push(i);
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (_, mut idx) in by_class {
        idx.shuffle(rng);
        let n = idx.len();
        let mut k = (frac * n as f64).round() as usize;
        if frac > 0.0 {
            k = k.max(1);
        }
        k = k.min(n - 1);
        val.extend_from_slice(&idx[..k]);
        train.extend_from_slice(&idx[k..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

/// The training batches' augmentation: a random shift of up to `shift` pixels in each
/// direction, the uncovered pixels black.
pub(crate) struct Augment {
    shift: i64,
    /// Black in the normalized space, per channel (what the digits' background and
    /// shifts fill with).
    fill: [f32; 3],
}

impl Augment {
    pub(crate) fn new(shift: usize, pp: &PreprocessConfig) -> Self {
        let black = |c: usize| (0.0 - pp.image_mean[c]) / pp.image_std[c];
        Augment {
            shift: shift as i64,
            fill: [black(0), black(1), black(2)],
        }
    }

    /// Fill `batch` with the images `idx` of `split` (`side`² pixels, 3 channels),
    /// shifted (draws two numbers from `rng` per image when shifting), and `labels`
    /// with their labels.
    pub(crate) fn batch(
        &self,
        split: &Split,
        idx: &[usize],
        side: usize,
        rng: &mut StdRng,
        batch: &mut Vec<f32>,
        labels: &mut Vec<u32>,
    ) {
        let per = 3 * side * side;
        batch.clear();
        batch.resize(idx.len() * per, 0.0);
        labels.clear();
        for (j, &i) in idx.iter().enumerate() {
            let src = &split.pixels[i * per..(i + 1) * per];
            let dst = &mut batch[j * per..(j + 1) * per];
            if self.shift > 0 {
                let dy = rng.random_range(-self.shift..=self.shift);
                let dx = rng.random_range(-self.shift..=self.shift);
                shift_into(src, dst, side, dy, dx, &self.fill);
            } else {
                dst.copy_from_slice(src);
            }
            labels.push(split.labels[i]);
        }
    }
}

/// Shift a CHW image by (dy, dx) pixels, filling with each channel's value for black.
fn shift_into(src: &[f32], dst: &mut [f32], side: usize, dy: i64, dx: i64, fill: &[f32; 3]) {
    let plane = side * side;
    for ch in 0..3 {
        for y in 0..side {
            for x in 0..side {
                let (sy, sx) = (y as i64 - dy, x as i64 - dx);
                dst[ch * plane + y * side + x] =
                    if sy >= 0 && sx >= 0 && (sy as usize) < side && (sx as usize) < side {
                        src[ch * plane + sy as usize * side + sx as usize]
                    } else {
                        fill[ch]
                    };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn stratified_split_keeps_every_class_in_both() {
        let labels: Vec<u32> = (0..100).map(|i| (i % 4) as u32).collect();
        let (tr, va) = stratified(&labels, 0.2, &mut StdRng::seed_from_u64(1));
        assert_eq!(tr.len() + va.len(), 100);
        assert_eq!(va.len(), 20);
        for c in 0..4 {
            assert_eq!(va.iter().filter(|&&i| labels[i] == c).count(), 5);
        }
        let (tr2, va2) = stratified(&labels, 0.2, &mut StdRng::seed_from_u64(1));
        assert_eq!((tr, va), (tr2, va2));
    }

    #[test]
    fn shift_moves_pixels_and_fills() {
        let src: Vec<f32> = (0..3 * 4).map(|i| i as f32).collect();
        let mut dst = vec![0.0; 12];
        shift_into(&src, &mut dst, 2, 0, 1, &[-1.0, -2.0, -3.0]);
        assert_eq!(&dst[0..4], &[-1.0, 0.0, -1.0, 2.0]);
    }
}
