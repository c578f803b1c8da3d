//! `examples/slurm/score-array.sbatch`, unchanged, on a real Slurm cluster: a one-node
//! cluster on this machine (`scripts/slurm-local`: Debian's slurm-wlm and munge,
//! slurmctld + slurmd on free unprivileged ports, everything in a temp folder). A
//! 4-task array over the digits fixture, merged, must equal one single run row for
//! row; so must a lone resubmission of one index (`sbatch --array=2`, where Slurm sets
//! SLURM_ARRAY_TASK_COUNT=1) and an array whose task 2 is requeued mid-run
//! (`scontrol requeue JOBID_2`, as on preemption) and finishes through the example's
//! resume path. A cluster that cannot start fails the test with the daemons' logs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use vit_batch::record::read_parquet;

use crate::util::{self, read_json, stderr, tempdir};

/// How long one array may take before the test fails (the whole test takes well under
/// a minute on a 2-core machine).
const JOB_DEADLINE: Duration = Duration::from_secs(300);

/// Merged predictions and metrics equal a single run's, row for row.
pub fn assert_same_run(single: &Path, merged: &Path) {
    let a = read_parquet(&single.join("predictions.parquet")).unwrap();
    let b = read_parquet(&merged.join("predictions.parquet")).unwrap();
    assert_eq!(
        a.len(),
        b.len(),
        "{} vs {}",
        single.display(),
        merged.display()
    );
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (
                &x.path,
                &x.label,
                x.label_id,
                x.pred_id,
                &x.topk_ids,
                x.correct,
                &x.status
            ),
            (
                &y.path,
                &y.label,
                y.label_id,
                y.pred_id,
                &y.topk_ids,
                y.correct,
                &y.status
            )
        );
        assert!(
            (x.score.unwrap() - y.score.unwrap()).abs() < 1e-5,
            "{}: {:?} vs {:?}",
            x.path,
            x.score,
            y.score
        );
    }
    let (ma, mb) = (
        read_json(&single.join("metrics.json")),
        read_json(&merged.join("metrics.json")),
    );
    for key in [
        "counts",
        "top1",
        "topk",
        "top1_scored",
        "per_class",
        "macro_avg",
        "confusion",
    ] {
        assert!(!ma[key].is_null(), "metrics.json has no {key}");
        assert_eq!(ma[key], mb[key], "{key}");
    }
}

/// A running one-node cluster; stopped (its jobs cancelled) when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

fn script() -> PathBuf {
    util::repo().join("scripts/slurm-local")
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempdir();
        let state = dir.path().join("slurm");
        let o = Command::new(script())
            .arg("start")
            .arg(&state)
            .output()
            .expect("run scripts/slurm-local");
        assert!(
            o.status.success(),
            "the local Slurm cluster did not start (scripts/slurm-local start, exit {:?}):\n{}{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            stderr(&o)
        );
        let conf = state.join("slurm.conf");
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(&format!("SLURM_CONF={}", conf.display())),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
        Cluster { dir, conf }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("slurm")
    }

    /// A Slurm client command talking to this cluster.
    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    fn ok(&self, prog: &str, args: &[&str]) -> String {
        let o = self.cmd(prog).args(args).output().unwrap();
        assert!(
            o.status.success(),
            "{prog} {args:?} failed: {}\n{}",
            stderr(&o),
            self.logs()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The daemons' logs, for failure messages.
    fn logs(&self) -> String {
        let mut s = String::new();
        for name in ["munged", "slurmctld", "slurmd"] {
            let p = self.state().join(format!("log/{name}.log"));
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            s.push_str(&format!("----- {} -----\n", p.display()));
            for l in tail.iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    /// `scontrol -o show job ID`: one line per (array task) record.
    fn job_lines(&self, id: &str) -> Vec<String> {
        let o = self
            .cmd("scontrol")
            .args(["-o", "show", "job", id])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Wait until no task of job `id` is pending or running, then check that every
    /// task completed with exit code 0; returns the tasks' records.
    fn wait_done(&self, id: &str, logs: &Path) -> Vec<String> {
        let start = Instant::now();
        loop {
            let o = self
                .cmd("squeue")
                .args(["-h", "-j", id, "-o", "%i %T"])
                .output()
                .unwrap();
            let queue = String::from_utf8_lossy(&o.stdout).into_owned();
            if o.status.success() && queue.trim().is_empty() {
                break;
            }
            assert!(
                start.elapsed() < JOB_DEADLINE,
                "job {id} not done after {JOB_DEADLINE:?}:\n{queue}\n{}\n{}",
                job_outputs(logs),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let lines = self.job_lines(id);
        assert!(!lines.is_empty(), "no record of job {id}\n{}", self.logs());
        for l in &lines {
            assert!(
                l.contains("JobState=COMPLETED") && l.contains(" ExitCode=0:0"),
                "a task of job {id} did not complete: {l}\n{}\n{}",
                job_outputs(logs),
                self.logs()
            );
        }
        lines
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let user = Command::new("id")
            .arg("-un")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        if let Ok(user) = user {
            // Only this private cluster's jobs: SLURM_CONF points at it.
            let _ = self.cmd("scancel").args(["--user", &user]).output();
        }
        let _ = Command::new(script())
            .arg("stop")
            .arg(self.state())
            .output();
    }
}

/// The tasks' own output files (`--output=LOGS/slurm-%A_%a.out`).
fn job_outputs(logs: &Path) -> String {
    let mut s = String::new();
    let mut files: Vec<_> = std::fs::read_dir(logs)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        s.push_str(&format!(
            "----- {} -----\n{}",
            f.display(),
            std::fs::read_to_string(&f).unwrap_or_default()
        ));
    }
    s
}

/// `sbatch --parsable ARGS examples/slurm/score-array.sbatch` with the example's
/// inputs in the environment (sbatch passes it on) and `vit-batch` on PATH; the
/// example's own resources are lowered to fit a small machine (options given to sbatch
/// override the script's `#SBATCH` lines). Returns the job id.
fn submit(
    cl: &Cluster,
    data: &Path,
    model: &Path,
    runs: &Path,
    logs: &Path,
    array: &str,
) -> String {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_vit-batch")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::fs::create_dir_all(logs).unwrap();
    let o: Output = cl
        .cmd("sbatch")
        .env("PATH", path)
        .env("ORT_DYLIB_PATH", util::ort_lib())
        .env("DATA", data)
        .env("MODEL", model)
        .env("RUNS", runs)
        .env_remove("VIT_BATCH_SHARDS")
        .env_remove("JOB_COMPLETION_INDEX")
        .args([
            "--parsable",
            &format!("--array={array}"),
            "--cpus-per-task=1",
            "--mem=256M",
            "--time=00:10:00",
            &format!("--output={}/slurm-%A_%a.out", logs.display()),
        ])
        .arg(util::repo().join("examples/slurm/score-array.sbatch"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "sbatch failed: {}\n{}",
        stderr(&o),
        cl.logs()
    );
    let out = String::from_utf8_lossy(&o.stdout);
    out.trim().split(';').next().unwrap().to_owned()
}

/// One unsharded run with one thread (as each task has), the reference.
fn single_run(data: &Path, model: &Path, out: &Path) {
    let o = util::bin()
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("SLURM_ARRAY_TASK_COUNT")
        .env_remove("JOB_COMPLETION_INDEX")
        .arg("score")
        .arg(data)
        .arg("--model")
        .arg(model)
        .arg("--out")
        .arg(out)
        .args(["--threads", "1", "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "single run failed: {}", stderr(&o));
}

fn merge(runs: &Path, shards: usize, out: &Path) {
    let mut c = util::bin();
    c.arg("merge");
    for k in 0..shards {
        c.arg(runs.join(format!("shard-{k}")));
    }
    let o = c.arg("--out").arg(out).arg("--overwrite").output().unwrap();
    assert!(o.status.success(), "merge failed: {}", stderr(&o));
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// A random-weight ViT-Ti (224 px), a few seconds per 90-image shard on one thread:
/// slow enough that a requeue reliably lands mid-run. Its `config.json` names the
/// classes after the digit folders, so the example scores it without a label map.
fn slow_model(dir: &Path) -> PathBuf {
    let m = dir.join("vit-tiny");
    let o = util::run(&[
        "export",
        "--preset",
        "vit-tiny-patch16-224",
        "--random-init",
        "--seed",
        "3",
        "--num-labels",
        "10",
        "--out",
        m.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "export failed: {}", stderr(&o));
    let p = m.join("config.json");
    let mut cfg = read_json(&p);
    cfg["id2label"] = (0..10)
        .map(|i| (i.to_string(), i.to_string().into()))
        .collect::<serde_json::Map<_, _>>()
        .into();
    cfg["label2id"] = (0..10)
        .map(|i| (i.to_string(), i.into()))
        .collect::<serde_json::Map<_, _>>()
        .into();
    std::fs::write(&p, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    m
}

// One scenario on one cluster (starting it is the slow part): a plain array, a lone
// resubmission of one index, and a requeue mid-run.
#[test]
fn example_array_on_a_local_slurm_cluster_merges_to_a_single_run() {
    let t = tempdir();
    let cl = Cluster::start();
    let sinfo = cl.ok("sinfo", &["-h", "-o", "%T"]);
    assert_eq!(sinfo.trim(), "idle", "{sinfo}");
    let data = util::fixtures().join("digits/test");

    // 1. The bundled digits model, a 4-task array, merged.
    let model = util::fixtures().join("models/vit-digits");
    let single = t.path().join("single");
    single_run(&data, &model, &single);
    let runs = t.path().join("runs");
    let logs = t.path().join("logs");
    let job = submit(&cl, &data, &model, &runs, &logs, "0-3");
    let tasks = cl.wait_done(&job, &logs);
    assert_eq!(tasks.len(), 4, "{tasks:#?}");
    assert_eq!(
        std::fs::read_to_string(runs.join("shards.txt"))
            .unwrap()
            .trim(),
        "4"
    );
    for k in 0..4 {
        let id = read_json(&runs.join(format!("shard-{k}/run.json")));
        assert_eq!(id["shard"], serde_json::json!({"index": k, "count": 4}));
    }
    let merged = t.path().join("merged");
    merge(&runs, 4, &merged);
    assert_same_run(&single, &merged);

    // 2. Shard 2 lost; index 2 resubmitted alone. Slurm now says
    // SLURM_ARRAY_TASK_COUNT=1; the example takes the count recorded by the array.
    let lost = runs.join("shard-2");
    std::fs::remove_dir_all(&lost).unwrap();
    let logs2 = t.path().join("logs-resubmit");
    let job2 = submit(&cl, &data, &model, &runs, &logs2, "2");
    let tasks = cl.wait_done(&job2, &logs2);
    assert_eq!(tasks.len(), 1, "{tasks:#?}");
    assert_eq!(field(&tasks[0], "ArrayTaskId"), Some("2"), "{}", tasks[0]);
    let out = job_outputs(&logs2);
    assert!(
        out.contains("a 1-task array in a run of 4 shards") && out.contains("scores shard 2/4"),
        "{out}"
    );
    assert_eq!(
        read_json(&lost.join("run.json"))["shard"],
        serde_json::json!({"index": 2, "count": 4})
    );
    merge(&runs, 4, &merged);
    assert_same_run(&single, &merged);

    // 3. Task 2 requeued mid-run (its run.json written, its predictions not yet): the
    // next attempt finds the run.json and finishes with --resume.
    let slow = slow_model(t.path());
    let single_slow = t.path().join("single-slow");
    single_run(&data, &slow, &single_slow);
    let runs3 = t.path().join("runs-requeue");
    let logs3 = t.path().join("logs-requeue");
    let job3 = submit(&cl, &data, &slow, &runs3, &logs3, "0-3");
    let shard2 = runs3.join("shard-2");
    let start = Instant::now();
    while !shard2.join("run.json").exists() {
        assert!(
            start.elapsed() < JOB_DEADLINE,
            "task 2 never started:\n{}\n{}",
            job_outputs(&logs3),
            cl.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !shard2.join("predictions.parquet").exists(),
        "task 2 finished before it could be requeued"
    );
    let task2 = format!("{job3}_2");
    cl.ok("scontrol", &["requeue", &task2]);
    // Once Slurm has ended the first attempt (the task is pending again, or already
    // running its second attempt), that attempt must not have finished.
    loop {
        let lines = cl.job_lines(&task2);
        let line = lines.first().cloned().unwrap_or_default();
        let restarts: u32 = field(&line, "Restarts")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        let state = field(&line, "JobState").unwrap_or("");
        if restarts >= 1 && (state == "PENDING" || state == "RUNNING") {
            assert!(
                !shard2.join("predictions.parquet").exists(),
                "the requeue came too late: task 2's first attempt had finished ({line})"
            );
            break;
        }
        assert!(
            restarts >= 1
                || state == "RUNNING"
                || state.starts_with("REQUEUE")
                || state == "COMPLETING",
            "task 2 after the requeue: {line}\n{}",
            cl.logs()
        );
        assert!(start.elapsed() < JOB_DEADLINE, "{line}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let tasks = cl.wait_done(&job3, &logs3);
    assert_eq!(tasks.len(), 4, "{tasks:#?}");
    let t2 = tasks
        .iter()
        .find(|l| field(l, "ArrayTaskId") == Some("2"))
        .expect("task 2's record");
    assert_eq!(field(t2, "Restarts"), Some("1"), "{t2}");
    for l in tasks
        .iter()
        .filter(|l| field(l, "ArrayTaskId") != Some("2"))
    {
        assert_eq!(field(l, "Restarts"), Some("0"), "{l}");
    }
    let merged3 = t.path().join("merged-requeue");
    merge(&runs3, 4, &merged3);
    assert_same_run(&single_slow, &merged3);
    let m = read_json(&merged3.join("metrics.json"));
    assert_eq!(m["throughput"]["scored"], 360, "{}", m["throughput"]);
}
