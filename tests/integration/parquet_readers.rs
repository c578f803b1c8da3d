//! `predictions.parquet` is read by the stacks users have: current pyarrow, pandas,
//! polars and duckdb, and pyarrow 14 (Arrow C++ before 16, which knows neither
//! `string_view` nor `large_list`). Each must see the rows vit-batch wrote.

use std::path::Path;

use crate::score::{digit_label_map, micro_model, score_args, small_dataset};
use crate::util::{self, run, stderr, tempdir};

fn read_with(python: &Path, file: &Path, readers: &[&str]) -> serde_json::Value {
    assert!(
        python.exists(),
        "{} missing: run scripts/setup",
        python.display()
    );
    let o = std::process::Command::new(python)
        .arg(util::repo().join("scripts/check_parquet.py"))
        .arg(file)
        .args(readers)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn predictions_parquet_reads_in_pyarrow_14_and_current_readers() {
    let t = tempdir();
    let model = micro_model(t.path());
    // An error row (nulls in score / top-k) and an unmapped class (null label_id).
    let data = small_dataset(t.path(), 3, 2);
    let lm = digit_label_map(t.path(), &data);
    let out = t.path().join("run");
    let o = run(&score_args(
        data.to_str().unwrap(),
        model.to_str().unwrap(),
        out.to_str().unwrap(),
        lm.to_str().unwrap(),
    ));
    util::assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let file = out.join("predictions.parquet");
    let rows = vit_batch::record::read_parquet(&file).unwrap();
    let paths: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
    let null_scores = rows.iter().filter(|r| r.score.is_none()).count();
    assert!(null_scores >= 1, "the dataset has a broken image");
    let label_id_sum: u64 = rows.iter().filter_map(|r| r.label_id).map(u64::from).sum();
    let topk_lens: Vec<Option<usize>> = rows
        .iter()
        .map(|r| r.topk_ids.as_ref().map(Vec::len))
        .collect();

    let check = |who: &str, v: &serde_json::Value| {
        assert!(v.get("error").is_none(), "{who}: {v}");
        assert_eq!(v["rows"], rows.len(), "{who}");
        let got: Vec<&str> = v["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(got, paths, "{who}");
        assert_eq!(v["null_scores"], null_scores, "{who}");
        assert_eq!(v["label_id_sum"], label_id_sum, "{who}");
        let lens: Vec<Option<usize>> = v["topk_lens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().map(|n| n as usize))
            .collect();
        assert_eq!(lens, topk_lens, "{who}");
    };

    let old = read_with(
        &util::repo().join(".venv-pyarrow14/bin/python"),
        &file,
        &["pyarrow"],
    );
    assert!(
        old["pyarrow"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("14.")),
        "{old}"
    );
    check("pyarrow 14", &old["pyarrow"]);

    let new = read_with(
        &util::venv_python(),
        &file,
        &["pyarrow", "pandas", "polars", "duckdb"],
    );
    for who in ["pyarrow", "pandas", "polars", "duckdb"] {
        check(who, &new[who]);
    }
    // Plain types: no string_view / large_list restored from the stored schema.
    for v in [&old["pyarrow"], &new["pyarrow"]] {
        let types = &v["types"];
        assert_eq!(types["path"], "string", "{types}");
        assert_eq!(types["label"], "string", "{types}");
        assert_eq!(types["topk_ids"], "list<element: int64>", "{types}");
        assert_eq!(types["topk_scores"], "list<element: float>", "{types}");
        assert_eq!(types["label_id"], "int64", "{types}");
    }
    assert_eq!(new["duckdb"]["types"]["path"], "VARCHAR");
    assert_eq!(new["duckdb"]["types"]["topk_ids"], "BIGINT[]");
}
