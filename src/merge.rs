//! `vit-batch merge`: shards scored on many machines become one run.
//!
//! A shard is an ordinary run folder whose `run.json` names its shard `K/N`, the
//! dataset fingerprint, the model and the preprocessing. Shard K holds the entries
//! `K, K+N, K+2N, ...` of the sorted file list, so the single-machine order is a
//! round-robin interleave of the shards, streamed in chunks; the rows then go through the same writer as
//! `score` and `--resume` (`score::write_outputs`), so the merged predictions, metrics
//! and report are identical to a single run.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::record::{self, Row};
use crate::score::{self, MetricsFile, RunIdentity, ShardThroughput, Throughput};

#[derive(Debug, Clone)]
pub struct MergeOptions {
    pub shards: Vec<PathBuf>,
    pub out: PathBuf,
    pub overwrite: bool,
}

struct ShardRun {
    dir: PathBuf,
    identity: RunIdentity,
    metrics: MetricsFile,
}

fn err(what: String) -> Error {
    Error::Output { what }
}

fn load(dir: &Path) -> Result<ShardRun> {
    let run_json = dir.join("run.json");
    let text = std::fs::read_to_string(&run_json).map_err(|e| {
        err(format!(
            "{}: not a vit-batch run folder (run.json: {e})",
            dir.display()
        ))
    })?;
    let identity: RunIdentity =
        serde_json::from_str(&text).map_err(|e| err(format!("{}: {e}", run_json.display())))?;
    let mp = dir.join("metrics.json");
    if !mp.exists() || !dir.join("predictions.parquet").exists() {
        return Err(err(format!(
            "shard {} is incomplete (no metrics.json / predictions.parquet): finish it with `vit-batch score ... --resume`",
            dir.display()
        )));
    }
    Ok(ShardRun {
        dir: dir.to_path_buf(),
        metrics: MetricsFile::read(&mp)?,
        identity,
    })
}

/// Check that the shards are one complete, consistent set; errors name the culprit.
fn check(shards: &[ShardRun]) -> Result<usize> {
    let first = &shards[0];
    let Some(s0) = first.identity.shard else {
        return Err(err(format!(
            "{} is not a shard (it was scored without --shard)",
            first.dir.display()
        )));
    };
    let n = s0.count;
    let mut seen: Vec<Option<&Path>> = vec![None; n];
    for s in shards {
        let id = &s.identity;
        let Some(sh) = id.shard else {
            return Err(err(format!(
                "{} is not a shard (it was scored without --shard)",
                s.dir.display()
            )));
        };
        let what = if sh.count != n {
            Some(format!(
                "is shard {}/{} but {} is shard {}/{n}",
                sh.index,
                sh.count,
                first.dir.display(),
                s0.index
            ))
        } else if id.model_sha256 != first.identity.model_sha256 {
            Some(format!(
                "used another model (sha256 {} vs {})",
                &id.model_sha256[..12],
                &first.identity.model_sha256[..12]
            ))
        } else if id.dataset_fingerprint != first.identity.dataset_fingerprint {
            Some("saw another dataset (fingerprint of paths and sizes differs)".to_string())
        } else if id.preprocess != first.identity.preprocess {
            Some("used other preprocessing".to_string())
        } else if id.top_k != first.identity.top_k
            || id.limit != first.identity.limit
            || id.model_labels != first.identity.model_labels
        {
            Some("used other --top-k / --limit / labels".to_string())
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

pub fn merge(opts: &MergeOptions) -> Result<MetricsFile> {
    if opts.shards.is_empty() {
        return Err(err("merge needs at least one shard folder".into()));
    }
    let mut shards = opts
        .shards
        .iter()
        .map(|d| load(d))
        .collect::<Result<Vec<_>>>()?;
    let n = check(&shards)?;
    shards.sort_by_key(|s| s.identity.shard.expect("checked").index);
    // Output folder: same rules as `score`.
    if opts.out.exists()
        && std::fs::read_dir(&opts.out)
            .map_err(|e| Error::io(&opts.out, e))?
            .next()
            .is_some()
    {
        if !opts.overwrite {
            return Err(err(format!(
                "{} is not empty; pass --overwrite to replace it",
                opts.out.display()
            )));
        }
        score::clear_run_files(&opts.out)?;
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let files: Vec<PathBuf> = shards
        .iter()
        .map(|s| s.dir.join("predictions.parquet"))
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
    // streams chunk by chunk and memory stays at n*m rows whatever the dataset size.
    let chunk = 4096usize;
    let positions = total.div_ceil(n);
    let mut identity = shards[0].identity.clone();
    identity.shard = None;
    identity.rows = total;
    record::atomic_write_bytes(
        &opts.out.join("run.json"),
        serde_json::to_string_pretty(&identity)?.as_bytes(),
    )?;
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
    let throughput = Throughput {
        scored,
        wall_s: wall,
        images_per_s: if wall > 0.0 {
            scored as f64 / wall
        } else {
            0.0
        },
        shards: per,
    };
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
    score::write_outputs(&opts.out, batches, &identity, skipped, throughput, run)
}
