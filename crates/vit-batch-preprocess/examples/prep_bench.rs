//! Single-thread decode + preprocess cost per image over a folder of images (the
//! stage-2 share of a scoring run). Used by benches/prep_bench.sh beside Pillow.
//!
//!     cargo run --release -p vit-batch-preprocess --example prep_bench -- DIR [SIDE] [REPEATS]
use std::time::Instant;

use vit_batch_preprocess::{PreprocessConfig, Preprocessor};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: prep_bench DIR [SIDE] [REPEATS]");
    let side: u32 = args.next().map(|s| s.parse().unwrap()).unwrap_or(224);
    let repeats: usize = args.next().map(|s| s.parse().unwrap()).unwrap_or(3);
    let mut files: Vec<_> = walkdir::WalkDir::new(&dir)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    files.sort();
    let p = Preprocessor::new(PreprocessConfig::vit_default(side)).unwrap();
    let mut out = vec![0f32; p.tensor_len()];
    // Only files that decode (benchmark folders may hold deliberate error cases).
    let bytes: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).unwrap())
        .filter(|b| vit_batch_preprocess::decode(b, None, p.max_pixels).is_ok())
        .collect();
    type Decode = fn(&[u8], Option<&str>, u64) -> Result<vit_batch_preprocess::Decoded, String>;
    let decoders: [(&str, Decode); 2] = [
        ("libjpeg-turbo", vit_batch_preprocess::decode),
        ("zune-jpeg", vit_batch_preprocess::decode_with_zune_jpeg),
    ];
    for (name, decode) in decoders {
        let mut best = f64::MAX;
        let (mut t_decode, mut t_geom) = (0.0, 0.0);
        for _ in 0..repeats {
            let start = Instant::now();
            let (mut d, mut g) = (0.0, 0.0);
            for b in &bytes {
                let t0 = Instant::now();
                let dec = decode(b, Some("jpg"), p.max_pixels).unwrap();
                let t1 = Instant::now();
                let img = p.geometry(&dec.rgb).unwrap();
                let t2 = Instant::now();
                p.to_tensor(&img, &mut out);
                d += (t1 - t0).as_secs_f64();
                g += (t2 - t1).as_secs_f64();
            }
            let s = start.elapsed().as_secs_f64();
            if s < best {
                (best, t_decode, t_geom) = (s, d, g);
            }
        }
        let n = bytes.len() as f64;
        println!(
            "RESULT tool=vit-batch decoder={name} images={} ms_per_image={:.3} decode_ms={:.3} resize_ms={:.3} tensor_ms={:.3}",
            bytes.len(),
            1e3 * best / n,
            1e3 * t_decode / n,
            1e3 * t_geom / n,
            1e3 * (best - t_decode - t_geom) / n
        );
    }
}
