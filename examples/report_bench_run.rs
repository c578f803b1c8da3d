//! Write a synthetic run folder (real Parquet + metrics.json through the real code
//! path) for timing `vit-batch report`: `report_bench_run OUT_DIR [ROWS] [CLASSES]`.
//! Used by `benches/report_bench.sh`.

#[path = "../tests/integration/synth.rs"]
mod synth;

fn main() {
    let mut args = std::env::args().skip(1);
    let out = std::path::PathBuf::from(
        args.next()
            .expect("usage: report_bench_run OUT_DIR [ROWS] [CLASSES]"),
    );
    let rows: usize = args
        .next()
        .map(|s| s.parse().expect("ROWS"))
        .unwrap_or(50_000);
    let classes: usize = args
        .next()
        .map(|s| s.parse().expect("CLASSES"))
        .unwrap_or(1000);
    let mut spec = synth::Spec::new(rows, classes);
    spec.error_every = 21;
    synth::write_run(&out, &spec);
    eprintln!("wrote {} ({rows} rows, {classes} classes)", out.display());
}
