//! Sharded runs: 4 shard processes at once, merged, must equal one single run; bad
//! shard sets give their own clear errors.

use std::process::Command;

use vit_batch::record::read_parquet;

use crate::score::{digit_label_map, micro_model};
use crate::util::{self, assert_no_panic, run, stderr, tempdir};

fn metrics(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).unwrap()).unwrap()
}

// Long on purpose: one scenario (single run, four shards, merge, the refusals of a bad
// set) whose steps share the runs it builds.
#[test]
fn four_shards_merged_equal_a_single_run() {
    let t = tempdir();
    let model = micro_model(t.path());
    let data = util::fixtures().join("digits/test");
    let lm = digit_label_map(t.path(), &data);
    let single = t.path().join("single");
    let base = [
        "--model",
        model.to_str().unwrap(),
        "--label-map",
        lm.to_str().unwrap(),
        "--quiet",
        "--threads",
        "1",
    ];
    let mut a = vec![
        "score",
        data.to_str().unwrap(),
        "--out",
        single.to_str().unwrap(),
    ];
    a.extend(base);
    assert_eq!(run(&a).status.code(), Some(0));

    let children: Vec<_> = (0..4)
        .map(|k| {
            let out = t.path().join(format!("shard-{k}"));
            let mut c = util::bin();
            c.args([
                "score",
                data.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--shard",
                &format!("{k}/4"),
                "--batch-size",
                "5",
            ]);
            c.args(base);
            (out, c.spawn().unwrap())
        })
        .collect();
    let mut dirs = vec![];
    for (out, mut child) in children {
        assert!(child.wait().unwrap().success());
        dirs.push(out);
    }
    // Every file in exactly one shard, balanced.
    let sizes: Vec<usize> = dirs
        .iter()
        .map(|d| read_parquet(&d.join("predictions.parquet")).unwrap().len())
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), 360);
    assert!(
        sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
        "{sizes:?}"
    );

    let merged = t.path().join("merged");
    let mut m = vec!["merge".to_string()];
    // Any order on the command line.
    for d in dirs.iter().rev() {
        m.push(d.display().to_string());
    }
    m.extend(["--out".into(), merged.display().to_string()]);
    let o = run(&m.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let a = read_parquet(&single.join("predictions.parquet")).unwrap();
    let b = read_parquet(&merged.join("predictions.parquet")).unwrap();
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (&x.path, x.pred_id, &x.topk_ids, x.correct, &x.status),
            (&y.path, y.pred_id, &y.topk_ids, y.correct, &y.status)
        );
        assert!((x.score.unwrap() - y.score.unwrap()).abs() < 1e-5);
    }
    let (ma, mb) = (metrics(&single), metrics(&merged));
    for key in ["counts", "top1", "topk", "per_class", "confusion"] {
        assert_eq!(ma[key], mb[key], "{key}");
    }
    assert_eq!(mb["throughput"]["shards"].as_array().unwrap().len(), 4);
    assert_eq!(mb["throughput"]["scored"], 360);

    // Missing, duplicated and mismatched shards: each its own error.
    let d: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let out2 = t.path().join("m2").display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["merge", &d[0], &d[1], &d[3], "--out", &out2],
            "missing shard(s) 2 of 4",
        ),
        (
            vec!["merge", &d[0], &d[1], &d[2], &d[3], &d[1], "--out", &out2],
            "given twice",
        ),
        (
            vec!["merge", &d[0], single.to_str().unwrap(), "--out", &out2],
            "is not a shard",
        ),
    ];
    for (args, needle) in cases {
        let o = run(&args);
        assert_no_panic(&o);
        assert_eq!(o.status.code(), Some(2));
        assert!(
            stderr(&o).contains(needle),
            "expected '{needle}': {}",
            stderr(&o)
        );
    }
    // A shard scored with another model is named as the culprit.
    let other = t.path().join("other-model");
    assert!(run(&[
        "export",
        "--preset",
        "vit-micro",
        "--random-init",
        "--seed",
        "8",
        "--num-labels",
        "10",
        "--out",
        other.to_str().unwrap()
    ])
    .status
    .success());
    let odd = t.path().join("odd-shard");
    let mut a = vec![
        "score",
        data.to_str().unwrap(),
        "--out",
        odd.to_str().unwrap(),
        "--shard",
        "2/4",
        "--model",
        other.to_str().unwrap(),
    ];
    a.extend(["--label-map", lm.to_str().unwrap(), "--quiet"]);
    assert_eq!(run(&a).status.code(), Some(0));
    let o = run(&[
        "merge",
        &d[0],
        &d[1],
        odd.to_str().unwrap(),
        &d[3],
        "--out",
        &out2,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("odd-shard") && stderr(&o).contains("another model"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn scheduler_variables_pick_the_shard() {
    let t = tempdir();
    let model = micro_model(t.path());
    let data = util::fixtures().join("digits/test");
    let lm = digit_label_map(t.path(), &data);
    let out = t.path().join("s");
    let o = Command::new(env!("CARGO_BIN_EXE_vit-batch"))
        .env("ORT_DYLIB_PATH", util::ort_lib())
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "3")
        .args([
            "score",
            data.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--label-map", lm.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("Slurm array task 1 of 3"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        read_parquet(&out.join("predictions.parquet"))
            .unwrap()
            .len(),
        120
    );
    let o = Command::new(env!("CARGO_BIN_EXE_vit-batch"))
        .env("ORT_DYLIB_PATH", util::ort_lib())
        .env("JOB_COMPLETION_INDEX", "0")
        .env_remove("VIT_BATCH_SHARDS")
        .args([
            "score",
            data.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--out",
            t.path().join("k").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--shards N"), "{}", stderr(&o));
}
