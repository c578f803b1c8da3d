//! `examples/kubernetes/indexed-job.yaml`: valid against the Kubernetes schema
//! (offline, `kubernetes-validate`'s bundled schemas, strict: unknown fields refused),
//! and its pods' commands, expanded as Kubernetes expands them and run with what
//! Kubernetes gives a pod (JOB_COMPLETION_INDEX) over the digits fixture, score every
//! shard once, survive a retried pod, and merge into a run equal to a single one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::slurm::assert_same_run;
use crate::util::{self, read_json, stderr, tempdir};

fn manifest() -> PathBuf {
    util::repo().join("examples/kubernetes/indexed-job.yaml")
}

fn validator() -> PathBuf {
    let p = util::repo().join(".venv/bin/kubernetes-validate");
    assert!(
        p.exists(),
        "{} missing: run scripts/setup (scripts/requirements-test.txt pins it)",
        p.display()
    );
    p
}

fn validate(file: &Path) -> std::process::Output {
    Command::new(validator())
        .args(["--strict", "--no-warn"])
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn indexed_job_manifest_is_valid_kubernetes() {
    let o = validate(&manifest());
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(o.status.success(), "{out}");
    // Both Jobs were checked, against a real schema version.
    for job in ["job/vit-batch-score", "job/vit-batch-merge"] {
        assert!(out.contains(&format!("passed for resource {job}")), "{out}");
    }
    // The validator does refuse what Kubernetes refuses: a misspelt field and a
    // completions count written as a string.
    let t = tempdir();
    let text = std::fs::read_to_string(manifest()).unwrap();
    for (from, to, needle) in [
        (
            "completionMode: Indexed",
            "completionMode: Indexed\n  completionz: 8",
            "completionz",
        ),
        ("completions: 8 ", "completions: \"8\" ", "completions"),
    ] {
        assert!(text.contains(from), "the manifest has no '{from}'");
        let bad = t.path().join("bad.yaml");
        std::fs::write(&bad, text.replacen(from, to, 1)).unwrap();
        let o = validate(&bad);
        let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
        assert!(!o.status.success() && out.contains(needle), "{out}");
    }
}

/// The manifest's documents, as JSON (PyYAML from the venv).
fn documents() -> Vec<Value> {
    let o = Command::new(util::venv_python())
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(manifest())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Kubernetes' expansion of `$(VAR)` in a container's command and args (its
/// third_party/forked/golang/expansion, `Expand` with `MappingFuncFor`): a reference to
/// a variable of the container's environment becomes its value, any other `$(...)` is
/// kept as written, `$$` is `$`; the reference ends at the first `)`.
fn k8s_expand(input: &str, env: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < input.len() {
        if input.as_bytes()[cursor] == b'$' && cursor + 1 < input.len() {
            out.push_str(&input[checkpoint..cursor]);
            let rest = &input[cursor + 1..];
            let advance = match rest.as_bytes()[0] {
                b'$' => {
                    out.push('$');
                    1
                }
                b'(' => match rest[1..].find(')') {
                    Some(i) => {
                        let name = &rest[1..1 + i];
                        match env.get(name) {
                            Some(v) => out.push_str(v),
                            None => out.push_str(&format!("$({name})")),
                        }
                        i + 2
                    }
                    None => {
                        out.push_str("$(");
                        1
                    }
                },
                _ => {
                    let c = rest.chars().next().unwrap();
                    out.push('$');
                    out.push(c);
                    c.len_utf8()
                }
            };
            cursor += advance;
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    out.push_str(&input[checkpoint.min(input.len())..]);
    out
}

#[test]
fn k8s_expansion_follows_kubernetes_rules() {
    let env: HashMap<String, String> = [("I".to_string(), "3".to_string())].into();
    assert_eq!(k8s_expand("a-$(I)-b", &env), "a-3-b");
    assert_eq!(k8s_expand("$(NOPE) $I $$(I) $", &env), "$(NOPE) $I $(I) $");
    // A shell `$( ... $(I) ...)`: the reference is the text up to the first `)`, not
    // a variable, so the inner `$(I)` is left to the shell (a command substitution).
    assert_eq!(k8s_expand("$( [ -f x$(I) ] )", &env), "$( [ -f x$(I) ] )");
}

/// The score Job's pod command for completion index `index`, as the container runs it:
/// `command` + `args` expanded with the pod's environment, the volumes' mount paths
/// mapped to folders of the test.
fn pod_command(
    container: &Value,
    env: &HashMap<String, String>,
    mounts: &[(String, PathBuf)],
) -> Vec<String> {
    let mut argv: Vec<String> = container["command"]
        .as_array()
        .into_iter()
        .chain(container["args"].as_array())
        .flatten()
        .map(|v| k8s_expand(v.as_str().unwrap(), env))
        .collect();
    for a in &mut argv {
        for (mount, host) in mounts {
            *a = a.replace(&format!("{mount}/"), &format!("{}/", host.display()));
        }
    }
    argv
}

fn mounts(container: &Value, root: &Path) -> Vec<(String, PathBuf)> {
    container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = m["mountPath"].as_str().unwrap().to_owned();
            (p.clone(), root.join(p.trim_start_matches('/')))
        })
        .collect()
}

fn run_pod(argv: &[String], env: &HashMap<String, String>) -> std::process::Output {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_vit-batch")).parent().unwrap();
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..])
        .env_clear()
        .env(
            "PATH",
            format!("{}:/usr/local/bin:/usr/bin:/bin", bin_dir.display()),
        )
        .env("ORT_DYLIB_PATH", util::ort_lib())
        .envs(env);
    c.output().unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

#[test]
fn indexed_job_pods_score_every_shard_and_merge_to_a_single_run() {
    let docs = documents();
    let job = |name: &str| {
        docs.iter()
            .find(|d| d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no Job {name} in the manifest"))
            .clone()
    };
    let score = job("vit-batch-score");
    let spec = &score["spec"];
    assert_eq!(spec["completionMode"], "Indexed", "{spec}");
    let n = spec["completions"].as_u64().expect("completions") as usize;
    let container = &spec["template"]["spec"]["containers"][0];
    let args = container["args"].to_string();
    // The total reaches vit-batch as --shards N (or VIT_BATCH_SHARDS), and it is the
    // Job's completions.
    assert!(
        args.contains(&format!("--shards {n} ")),
        "the score command must pass --shards {n} (= completions): {args}"
    );
    assert!(args.contains("JOB_COMPLETION_INDEX"), "{args}");

    // The pods' folders: the digits fixture as the data volume, the bundled model as
    // the model volume, an empty runs volume.
    let t = tempdir();
    let root = t.path().join("pod");
    let ms = mounts(container, &root);
    let host = |m: &str| ms.iter().find(|(p, _)| p == m).unwrap().1.clone();
    copy_dir(
        &util::fixtures().join("digits/test"),
        &host("/data").join("eval"),
    );
    copy_dir(
        &util::fixtures().join("models/vit-digits"),
        &host("/models").join("vit-base"),
    );
    std::fs::create_dir_all(host("/runs")).unwrap();

    let mut container_env: HashMap<String, String> = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect();
    for i in 0..n {
        // What the Job controller adds to every container of pod i.
        container_env.insert("JOB_COMPLETION_INDEX".into(), i.to_string());
        let argv = pod_command(container, &container_env, &ms);
        let o = run_pod(&argv, &container_env);
        assert!(o.status.success(), "pod {i} ({argv:?}): {}", stderr(&o));
        let shard = host("/runs").join(format!("nightly/shard-{i}"));
        assert_eq!(
            read_json(&shard.join("run.json"))["shard"],
            serde_json::json!({"index": i, "count": n}),
            "pod {i}"
        );
        if i == 2 {
            // A retried pod (backoffLimit, restartPolicy OnFailure) finds its shard's
            // run.json and takes the resume path; a plain score would refuse the folder.
            let o = run_pod(&argv, &container_env);
            assert!(
                o.status.success(),
                "retried pod {i} ({argv:?}): {}",
                stderr(&o)
            );
        }
    }

    // The baseline the merge Job gates against: one single run of the same model.
    let baseline = host("/runs").join("baseline");
    util::score_ok(
        &host("/data").join("eval"),
        &host("/models").join("vit-base"),
        &baseline,
        &[],
    );
    let merge = job("vit-batch-merge");
    let mc = &merge["spec"]["template"]["spec"]["containers"][0];
    let mms = mounts(mc, &root);
    let argv = pod_command(mc, &HashMap::new(), &mms);
    let o = run_pod(&argv, &HashMap::new());
    assert!(o.status.success(), "merge pod ({argv:?}): {}", stderr(&o));
    let nightly = host("/runs").join("nightly");
    assert_same_run(&baseline, &nightly.join("merged"));
    for f in ["gate.xml", "gate.md"] {
        assert!(nightly.join(f).is_file(), "the merge Job wrote no {f}");
    }
}
