//! Minimal driver of `vit_batch::export::export` for benches/export_bench.py (the real
//! CLI is `vit-batch export`). Prints the summary, wall time and peak RSS as JSON.
//!
//! Usage: export (--preset NAME | --checkpoint DIR) --out DIR [--variant standard|fused]
//!        [--seed N] [--labels C] [--attentions]

use std::path::PathBuf;
use std::time::Instant;

use vit_batch::export::{export, ExportOptions, ExportSource, GraphVariant};

fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss as u64 * 1024
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut preset, mut ck, mut out, mut variant) = (None, None, None, GraphVariant::default());
    let (mut seed, mut labels, mut attn) = (0u64, 1000usize, false);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--preset" => preset = Some(val()?),
            "--checkpoint" => ck = Some(PathBuf::from(val()?)),
            "--out" => out = Some(PathBuf::from(val()?)),
            "--seed" => seed = val()?.parse()?,
            "--labels" => labels = val()?.parse()?,
            "--attentions" => attn = true,
            "--variant" => {
                variant = match val()?.as_str() {
                    "standard" => GraphVariant::Standard,
                    "fused" => GraphVariant::Fused,
                    v => return Err(format!("unknown variant {v}").into()),
                }
            }
            _ => return Err(format!("unknown argument {a}").into()),
        }
    }
    let source = match (preset, ck) {
        (Some(name), None) => ExportSource::Preset {
            name,
            seed,
            num_labels: labels,
        },
        (None, Some(dir)) => ExportSource::Checkpoint(dir),
        _ => return Err("give exactly one of --preset, --checkpoint".into()),
    };
    let mut opts = ExportOptions::new(source, out.ok_or("--out is required")?);
    opts.variant = variant;
    opts.with_attentions = attn;
    let t = Instant::now();
    let s = export(&opts)?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "out_dir": s.out_dir, "num_params": s.num_params, "variant": s.variant.as_str(),
            "source": s.source, "source_sha256": s.source_sha256, "model_bytes": s.model_bytes,
            "warnings": s.warnings, "export_seconds": secs, "peak_rss_bytes": peak_rss_bytes(),
        })
    );
    Ok(())
}
