//! `vit-batch merge`: shards scored on many machines become one run.
//!
//! A shard is an ordinary run folder whose `run.json` names its shard `K/N`, the
//! dataset fingerprint, the model and the preprocessing. Shard K holds the entries
//! `K, K+N, K+2N, ...` of the sorted file list, so the single-machine order is a
//! round-robin interleave of the shards, streamed in chunks; the rows then go through
//! the same writer as `score` and `--resume` (`run::write_outputs`), so the merged
//! predictions, metrics and report are identical to a single run. Shards must agree
//! by the same identity rule as `--resume` (`RunIdentity::differences`).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::record::{self, Row, Status};
use crate::run::{
    self, IdentityScope, MetricsFile, OutPolicy, Run, RunIdentity, ShardThroughput, Throughput,
};

pub use crate::options::MergeOptions;

struct ShardRun {
    dir: PathBuf,
    identity: RunIdentity,
    metrics: MetricsFile,
}

fn err(what: String) -> Error {
    Error::Output { what }
}

fn load(dir: &Path) -> Result<ShardRun> {
    let identity = RunIdentity::read(dir).map_err(|e| {
        err(format!(
            "{}: not a vit-batch run folder ({e})",
            dir.display()
        ))
    })?;
    let run = Run::open(dir).map_err(|_| {
        err(format!(
            "shard {} is incomplete (no metrics.json / predictions.parquet): finish it with `vit-batch score ... --resume`",
            dir.display()
        ))
    })?;
    Ok(ShardRun {
        dir: dir.to_path_buf(),
        metrics: run.metrics,
        identity,
    })
}

/// Check that the shards are one complete, consistent set; errors name the culprit.
fn check(shards: &[ShardRun]) -> Result<usize> {
    let first = &shards[0];
    let Some(s0) = first.identity.shard else {
        return Err(err(format!(
            "{} is not a shard (it was scored without the shard option)",
            first.dir.display()
        )));
    };
    let n = s0.count;
    let mut seen: Vec<Option<&Path>> = vec![None; n];
    for s in shards {
        let id = &s.identity;
        let Some(sh) = id.shard else {
            return Err(err(format!(
                "{} is not a shard (it was scored without the shard option)",
                s.dir.display()
            )));
        };
        let diffs = id.differences(&first.identity, IdentityScope::Content);
        let what = if sh.count != n {
            Some(format!(
                "is shard {}/{} but {} is shard {}/{n}",
                sh.index,
                sh.count,
                first.dir.display(),
                s0.index
            ))
        } else if !diffs.is_empty() {
            Some(format!(
                "used another {} than {}",
                diffs.join(", another "),
                first.dir.display()
            ))
        } else {
            None
        };
        if let Some(w) = what {
            return Err(err(format!("shard {} {w}", s.dir.display())));
        }
        if let Some(prev) = seen[sh.index] {
            return Err(err(format!(
                "shard {}/{n} given twice: {} and {}",
                sh.index,
                prev.display(),
                s.dir.display()
            )));
        }
        seen[sh.index] = Some(&s.dir);
    }
    let missing: Vec<String> = seen
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_none())
        .map(|(i, _)| i.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(err(format!(
            "missing shard(s) {} of {n}",
            missing.join(", ")
        )));
    }
    Ok(n)
}

/// Rows read per slice when checking a shard's predictions (and at most per shard
/// and step of the merge).
const CHECK_CHUNK: usize = 4096;
/// Rows of all shards together that one merge step holds.
const MERGE_ROWS: usize = 64 * 1024;
/// Rows per shard and merge step at least.
const MIN_CHUNK: usize = 256;

/// Check every row of the predictions file `file` of a shard with `identity`:
/// probabilities finite and in [0, 1], class ids in range of the model's labels, and
/// the top-k lists of a scored row of the run's length, with the top-1 first.
fn check_rows(file: &Path, identity: &RunIdentity) -> Result<()> {
    let total = record::parquet_rows(file)?;
    let labels = identity.model_labels.len();
    let k = identity.top_k.min(labels);
    for offset in (0..total).step_by(CHECK_CHUNK) {
        let rows = record::read_parquet_slice(file, offset, CHECK_CHUNK)?;
        for (i, r) in rows.iter().enumerate() {
            if let Some(what) = row_problem(r, labels, k) {
                return Err(Error::Corrupt {
                    path: file.to_path_buf(),
                    what: format!(
                        "row {} (path '{}'): {what}; this shard's predictions are not what vit-batch wrote: score the shard again",
                        offset + i,
                        r.path
                    ),
                });
            }
        }
    }
    Ok(())
}

/// What is wrong with row `r` of a run with `labels` classes and top-`k` lists.
fn row_problem(r: &Row, labels: usize, k: usize) -> Option<String> {
    let prob = |name: &str, v: f32| {
        (!(v.is_finite() && (0.0..=1.0).contains(&v)))
            .then(|| format!("{name} {v} is not a probability in [0, 1]"))
    };
    let id = |name: &str, v: u32| {
        (v as usize >= labels)
            .then(|| format!("{name} {v} is out of range (the model has {labels} classes)"))
    };
    if let Some(p) = r.score.and_then(|s| prob("score", s)) {
        return Some(p);
    }
    if let Some(p) = r
        .topk_scores
        .iter()
        .flatten()
        .find_map(|&s| prob("a topk_scores value", s))
    {
        return Some(p);
    }
    for (name, v) in [("label_id", r.label_id), ("pred_id", r.pred_id)] {
        if let Some(p) = v.and_then(|v| id(name, v)) {
            return Some(p);
        }
    }
    if let Some(p) = r
        .topk_ids
        .iter()
        .flatten()
        .find_map(|&v| id("a topk_ids value", v))
    {
        return Some(p);
    }
    let (ids, scores) = (
        r.topk_ids.as_ref().map(Vec::len),
        r.topk_scores.as_ref().map(Vec::len),
    );
    if ids != scores {
        return Some(format!(
            "topk_ids has {} values but topk_scores has {}",
            ids.unwrap_or(0),
            scores.unwrap_or(0)
        ));
    }
    if r.status == Status::Ok {
        if ids != Some(k) {
            return Some(format!(
                "a scored row has {} top-k values, the run keeps {k}",
                ids.unwrap_or(0)
            ));
        }
        let first = r.topk_ids.as_ref().and_then(|t| t.first().copied());
        if r.pred_id.is_none() || r.score.is_none() || first != r.pred_id {
            return Some("a scored row's pred_id is missing or is not its first top-k id".into());
        }
    }
    None
}

/// Merge the shard runs of `opts.shards` into one run in `opts.out`; the merged
/// predictions and metrics equal a single run's.
pub fn merge(opts: &MergeOptions) -> Result<MetricsFile> {
    if opts.shards.is_empty() {
        return Err(err("merge needs at least one shard folder".into()));
    }
    for d in &opts.shards {
        run::check_apart(&opts.out, "merge --out", d, "the shard")?;
    }
    let mut shards = opts
        .shards
        .iter()
        .map(|d| load(d))
        .collect::<Result<Vec<_>>>()?;
    let n = check(&shards)?;
    shards.sort_by_key(|s| s.identity.shard.expect("checked").index);
    // Every row is checked before the output folder is touched: a shard whose
    // predictions were edited or damaged is refused, naming the file and the row.
    for s in &shards {
        check_rows(&s.dir.join(run::PREDICTIONS), &s.identity)?;
    }
    let _lock = run::prepare_out_dir(
        &opts.out,
        if opts.overwrite {
            OutPolicy::Overwrite
        } else {
            OutPolicy::Fresh
        },
    )?;
    let files: Vec<PathBuf> = shards
        .iter()
        .map(|s| s.dir.join(run::PREDICTIONS))
        .collect();
    let mut total = 0;
    for (s, f) in shards.iter().zip(&files) {
        let rows = record::parquet_rows(f)?;
        if rows != s.identity.rows {
            return Err(err(format!(
                "shard {} holds {rows} rows, its run.json says {}",
                s.dir.display(),
                s.identity.rows
            )));
        }
        total += rows;
    }
    // Shard k holds global entries k, k+n, k+2n, ...: positions p..p+m of every shard
    // interleaved round-robin are exactly the global rows p*n..(p+m)*n, so the merge
    // streams chunk by chunk and memory stays at n*m rows whatever the dataset size:
    // about MERGE_ROWS rows in flight (at least MIN_CHUNK per shard, so that a
    // thousand shards are not read a few rows at a time).
    let chunk = (MERGE_ROWS / n).clamp(MIN_CHUNK, CHECK_CHUNK);
    let positions = total.div_ceil(n);
    let mut identity = shards[0].identity.clone();
    identity.shard = None;
    identity.rows = total;
    identity.write(&opts.out)?;
    let per: Vec<ShardThroughput> = shards
        .iter()
        .map(|s| ShardThroughput {
            shard: s.identity.shard.expect("checked"),
            scored: s.metrics.throughput.scored,
            wall_s: s.metrics.throughput.wall_s,
            images_per_s: s.metrics.throughput.images_per_s,
        })
        .collect();
    let scored: u64 = per.iter().map(|p| p.scored).sum();
    let wall = per.iter().map(|p| p.wall_s).fold(0.0, f64::max);
    let throughput = Throughput::new(scored, wall, per);
    let mut run = shards[0].metrics.run.clone();
    run.shard = None;
    let skipped = shards[0].metrics.metrics.counts.skipped;
    let batches = (0..positions).step_by(chunk).map(|p| -> Result<Vec<Row>> {
        let parts: Vec<Vec<Row>> = files
            .iter()
            .map(|f| record::read_parquet_slice(f, p, chunk))
            .collect::<Result<_>>()?;
        let mut iters: Vec<_> = parts.into_iter().map(Vec::into_iter).collect();
        let end = ((p + chunk) * n).min(total);
        let mut out = Vec::with_capacity(end - p * n);
        for i in p * n..end {
            match iters[i % n].next() {
                Some(r) => out.push(r),
                None => {
                    return Err(err(format!(
                        "shard {} has too few rows for a {n}-way split",
                        shards[i % n].dir.display()
                    )))
                }
            }
        }
        Ok(out)
    });
    run::write_outputs(&opts.out, batches, &identity, skipped, throughput, run)
}
