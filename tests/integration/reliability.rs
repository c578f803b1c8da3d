//! Bad input, crashes and resume: every file accounted for, nothing lost.
//! The corpus is built here at test time from real fixture images.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prost::Message;
use vit_batch::onnx;
use vit_batch::record::{read_parquet, Row, Status};

use crate::score::{digit_label_map, micro_model, score_args};
use crate::util::{self, assert_no_panic, run, stderr, tempdir, write};

fn encode(img: &image::DynamicImage, f: image::ImageFormat) -> Vec<u8> {
    let mut v = Vec::new();
    img.write_to(&mut Cursor::new(&mut v), f).unwrap();
    v
}

fn photo(name: &str) -> Vec<u8> {
    std::fs::read(util::fixtures().join("photos").join(name)).unwrap()
}

/// A GIF whose header declares 65535x65535 pixels in a few bytes.
fn gif_bomb() -> Vec<u8> {
    let mut v = b"GIF89a".to_vec();
    v.extend([0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00]);
    v.extend([
        0x2c, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
    ]);
    v
}

fn animated_gif() -> Vec<u8> {
    let mut v = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut v);
        for c in [[200u8, 10, 10, 255], [10, 10, 200, 255]] {
            let f = image::Frame::new(image::RgbaImage::from_pixel(16, 16, image::Rgba(c)));
            enc.encode_frame(f).unwrap();
        }
    }
    v
}

/// Build the corpus; returns (root, expected: rel path -> Some(error needle) | None for ok).
/// Long on purpose: a flat list of bad files, one entry each.
fn corpus(dir: &Path) -> (PathBuf, BTreeMap<String, Option<&'static str>>) {
    let root = dir.join("data");
    let mut exp = BTreeMap::new();
    let mut put = |rel: &str, bytes: &[u8], expect: Option<&'static str>| {
        write(&root.join(rel), bytes);
        exp.insert(rel.to_string(), expect);
    };
    let png = photo("coffee_palette.png");
    let jpg = photo("coffee_500x375.jpg");
    let rgb = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(40, 30, |x, y| {
        image::Rgb([x as u8 * 6, y as u8 * 8, 90])
    }));
    for ext in ["png", "jpg", "jpeg", "gif", "webp", "bmp", "tif", "tiff"] {
        put(&format!("0/zero.{ext}"), b"", Some("empty file"));
    }
    put(
        "0/truncated.png",
        &png[..png.len() / 2],
        Some("decode error"),
    );
    put(
        "0/truncated.jpg",
        &jpg[..jpg.len() / 3],
        Some("decode error"),
    );
    let mut corrupt = png.clone();
    for b in corrupt.iter_mut().skip(40).take(400) {
        *b ^= 0x5a;
    }
    put("0/corrupt.png", &corrupt, Some("decode error"));
    put(
        "0/garbage.webp",
        b"RIFF\x10\x00\x00\x00WEBPVP8 garbage garbage",
        Some("decode error"),
    );
    put(
        "0/random.bmp",
        &[0x42, 0x4d, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        Some("error"),
    );
    put(
        "0/text.tiff",
        b"just some text pretending",
        Some("not a recognised image format"),
    );
    put("0/bomb.gif", &gif_bomb(), Some("decompression bomb"));
    // Valid but unusual.
    put(
        "1/png-named.jpg",
        &encode(&rgb, image::ImageFormat::Png),
        None,
    );
    put(
        "1/gray.png",
        &encode(
            &image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(
                20,
                20,
                image::Luma([77]),
            )),
            image::ImageFormat::Png,
        ),
        None,
    );
    put(
        "1/gray-alpha.png",
        &encode(
            &image::DynamicImage::ImageLumaA8(image::GrayAlphaImage::from_pixel(
                9,
                7,
                image::LumaA([77, 30]),
            )),
            image::ImageFormat::Png,
        ),
        None,
    );
    put("1/palette.png", &png, None);
    put("1/rgba.png", &photo("chelsea_rgba.png"), None);
    put("1/cmyk.jpg", &photo("astronaut_cmyk.jpg"), None);
    put("1/gray16.png", &photo("camera_gray16.png"), None);
    put(
        "1/progressive.jpg",
        &photo("astronaut_progressive.jpg"),
        None,
    );
    put("1/exif6.jpg", &photo("rocket_exif6.jpg"), None);
    put("1/animated.gif", &animated_gif(), None);
    put(
        "1/one.png",
        &encode(
            &image::DynamicImage::new_rgb8(1, 1),
            image::ImageFormat::Png,
        ),
        None,
    );
    put(
        "1/wide.png",
        &encode(
            &image::DynamicImage::new_rgb8(12000, 2),
            image::ImageFormat::Png,
        ),
        None,
    );
    put("1/rgb.bmp", &encode(&rgb, image::ImageFormat::Bmp), None);
    put("1/rgb.tiff", &encode(&rgb, image::ImageFormat::Tiff), None);
    put("1/rgb.webp", &encode(&rgb, image::ImageFormat::WebP), None);
    put("1/UPPER.JPEG", &jpg, None);
    let deep: String = (0..40).map(|i| format!("d{i}/")).collect();
    put(&format!("2/{deep}deep.png"), &png, None);
    put("2/<script>alert(1)</script>.png", &png, None);
    // File system trouble.
    std::os::unix::fs::symlink(root.join("nowhere.png"), root.join("2/dangling.png")).unwrap();
    exp.insert("2/dangling.png".into(), Some("dangling symbolic link"));
    std::os::unix::fs::symlink(root.join("2"), root.join("2/loop")).unwrap();
    let fifo = root.join("2/fifo.png");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    exp.insert("2/fifo.png".into(), Some("not a regular file"));
    let bad_name = root.join(std::ffi::OsStr::from_bytes(b"2/caf\xE9.png"));
    std::fs::write(&bad_name, &png).unwrap();
    exp.insert("2/caf\\xE9.png".into(), None);
    std::fs::create_dir_all(root.join("3")).unwrap();
    write(&root.join("2/notes.txt"), b"skipped");
    (root, exp)
}

#[test]
fn every_bad_file_is_an_error_row_and_every_good_one_scores() {
    let t = tempdir();
    let model = micro_model(t.path());
    let (root, expected) = corpus(t.path());
    let lm = digit_label_map(t.path(), &root);
    let out = t.path().join("run");
    let o = run(&[
        "score",
        root.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--label-map",
        lm.to_str().unwrap(),
        "--batch-size",
        "4",
    ]);
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("symbolic link loop"), "{e}");
    assert!(e.contains("class folder '3' holds no image"), "{e}");
    let rows = read_parquet(&out.join("predictions.parquet")).unwrap();
    let got: BTreeMap<&str, &Row> = rows.iter().map(|r| (r.path.as_str(), r)).collect();
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        expected.keys().map(String::as_str).collect::<Vec<_>>(),
        "one row per image file"
    );
    let mut handled = 0;
    for (path, want) in &expected {
        let r = got[path.as_str()];
        match want {
            Some(needle) => {
                assert_eq!(r.status, Status::Error, "{path} should fail");
                let msg = r.error.as_deref().unwrap();
                assert!(
                    msg.contains(needle),
                    "{path}: expected '{needle}' in '{msg}'"
                );
                assert!(r.pred.is_none() && r.correct.is_none());
            }
            None => {
                assert_eq!(r.status, Status::Ok, "{path}: {:?}", r.error);
                assert!(r.score.unwrap().is_finite());
            }
        }
        handled += 1;
    }
    assert!(got["1/png-named.jpg"]
        .warning
        .as_deref()
        .unwrap()
        .contains("content is PNG but the extension says JPG"));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    let errors = expected.values().filter(|v| v.is_some()).count();
    assert_eq!(m["counts"]["images"], expected.len());
    assert_eq!(m["counts"]["errors"], errors);
    assert_eq!(m["counts"]["skipped"], 1);
    eprintln!("reliability corpus: {} cases tried, {handled} handled as expected, {errors} error rows, 0 lost", expected.len());
}

#[test]
fn an_empty_dataset_is_a_clear_error() {
    let t = tempdir();
    let model = micro_model(t.path());
    std::fs::create_dir_all(t.path().join("empty/a")).unwrap();
    let o = run(&[
        "score",
        t.path().join("empty").to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        t.path().join("o").to_str().unwrap(),
    ]);
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no image found"), "{}", stderr(&o));
}

fn dim(v: i64) -> onnx::tensor_shape_proto::Dimension {
    onnx::tensor_shape_proto::Dimension {
        value: Some(if v < 0 {
            onnx::tensor_shape_proto::dimension::Value::DimParam("batch".into())
        } else {
            onnx::tensor_shape_proto::dimension::Value::DimValue(v)
        }),
        denotation: None,
    }
}

fn vi(name: &str, elem: onnx::tensor_proto::DataType, dims: &[i64]) -> onnx::ValueInfoProto {
    onnx::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(onnx::TypeProto {
            value: Some(onnx::type_proto::Value::TensorType(
                onnx::type_proto::Tensor {
                    elem_type: Some(elem as i32),
                    shape: Some(onnx::TensorShapeProto {
                        dim: dims.iter().map(|&d| dim(d)).collect(),
                    }),
                },
            )),
            denotation: None,
        }),
        ..Default::default()
    }
}

/// A one-node (Identity) model with the given input type: a real ONNX file ORT loads.
fn identity_model(path: &Path, elem: onnx::tensor_proto::DataType, dims: &[i64]) {
    let m = onnx::ModelProto {
        ir_version: Some(8),
        opset_import: vec![onnx::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(18),
        }],
        graph: Some(onnx::GraphProto {
            name: Some("g".into()),
            node: vec![onnx::NodeProto {
                op_type: Some("Identity".into()),
                input: vec!["pixel_values".into()],
                output: vec!["logits".into()],
                ..Default::default()
            }],
            input: vec![vi("pixel_values", elem, dims)],
            output: vec![vi("logits", elem, dims)],
            ..Default::default()
        }),
        ..Default::default()
    };
    write(path, &m.encode_to_vec());
}

#[test]
fn bad_models_fail_fast_before_reading_images() {
    use onnx::tensor_proto::DataType;
    let t = tempdir();
    let data = crate::score::small_dataset(t.path(), 2, 2);
    let out = t.path().join("o");
    let rank2 = t.path().join("rank2.onnx");
    identity_model(&rank2, DataType::Float, &[-1, 3072]);
    let f64m = t.path().join("double.onnx");
    identity_model(&f64m, DataType::Double, &[-1, 3, 32, 32]);
    // A 32x32 model whose preprocessor_config.json asks for 48x48.
    let model = micro_model(t.path());
    let pp = model.join("preprocessor_config.json");
    let text = std::fs::read_to_string(&pp).unwrap().replace("32", "48");
    std::fs::write(&pp, text).unwrap();
    for (m, needle) in [
        (rank2.to_str().unwrap(), "rank 2"),
        (f64m.to_str().unwrap(), "dtype"),
        (model.to_str().unwrap(), "the preprocessing produces 48"),
    ] {
        let o = run(&[
            "score",
            data.to_str().unwrap(),
            "--model",
            m,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_no_panic(&o);
        assert_eq!(o.status.code(), Some(2), "{m}");
        assert!(
            stderr(&o).contains(needle),
            "{m}: expected '{needle}': {}",
            stderr(&o)
        );
        assert!(!out.join("predictions.parquet").exists());
    }
}

#[test]
fn non_finite_logits_are_flagged_per_row() {
    let t = tempdir();
    let model = micro_model(t.path());
    let path = model.join("model.onnx");
    let mut m = onnx::ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
    let g = m.graph.as_mut().unwrap();
    let init = g
        .initializer
        .iter_mut()
        .find(|i| i.name.as_deref() == Some("logits.bias"))
        .expect("classifier bias initializer (logits.bias)");
    let n = init.dims.iter().product::<i64>() as usize;
    init.float_data.clear();
    init.raw_data = Some(
        std::iter::repeat_n(f32::NAN.to_le_bytes(), n)
            .flatten()
            .collect(),
    );
    write(&path, &m.encode_to_vec());
    let data = crate::score::small_dataset(t.path(), 2, 2);
    let lm = digit_label_map(t.path(), &data);
    let out = t.path().join("o");
    let o = run(&[
        "score",
        data.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--label-map",
        lm.to_str().unwrap(),
    ]);
    // Every row failed, so nothing was evaluated: the data-quality gate fails the
    // run (exit 3) and its rows are kept.
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let rows = read_parquet(&out.join("predictions.parquet")).unwrap();
    let decoded: Vec<&Row> = rows.iter().filter(|r| r.path != "1/broken.png").collect();
    assert!(!decoded.is_empty());
    for r in decoded {
        assert_eq!(r.status, Status::Error);
        assert!(
            r.error.as_deref().unwrap().contains("non-finite logits"),
            "{:?}",
            r.error
        );
    }
}

#[test]
fn kill_9_then_resume_equals_an_uninterrupted_run() {
    let t = tempdir();
    let model = micro_model(t.path());
    let root = digits_twice(t.path());
    let lm = digit_label_map(t.path(), &root);
    let args = |out: &Path| -> Vec<String> {
        [
            "score",
            root.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--label-map",
            lm.to_str().unwrap(),
            "--quiet",
            "--batch-size",
            "8",
            "--checkpoint-rows",
            "200",
            "--threads",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let full = t.path().join("full");
    assert_eq!(
        util::bin().args(args(&full)).status().unwrap().code(),
        Some(0)
    );

    let killed = t.path().join("killed");
    let mut child = util::bin().args(args(&killed)).spawn().unwrap();
    let start = Instant::now();
    loop {
        let parts = std::fs::read_dir(killed.join("parts"))
            .map(|d| d.count())
            .unwrap_or(0);
        if parts >= 3 || start.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !killed.join("predictions.parquet").exists(),
        "run finished before it could be killed"
    );
    assert!(!killed.join("metrics.json").exists());
    // A half-written temporary may exist; it is never taken for a part.
    let mut again = args(&killed);
    again.push("--resume".into());
    let o = util::bin().args(&again).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let a = read_parquet(&full.join("predictions.parquet")).unwrap();
    let b = read_parquet(&killed.join("predictions.parquet")).unwrap();
    assert_eq!(a.len(), 3594);
    assert_eq!(a, b, "resumed rows differ from the uninterrupted run");
    let ma: serde_json::Value =
        serde_json::from_slice(&std::fs::read(full.join("metrics.json")).unwrap()).unwrap();
    let mb: serde_json::Value =
        serde_json::from_slice(&std::fs::read(killed.join("metrics.json")).unwrap()).unwrap();
    for key in ["counts", "top1", "per_class", "confusion", "calibration"] {
        assert_eq!(ma[key], mb[key], "{key}");
    }
    assert!(
        (mb["throughput"]["scored"].as_u64().unwrap()) < 3594,
        "resume rescored everything"
    );

    // Resuming with another model is refused.
    let other = other_model(t.path());
    let mut bad = args(&killed);
    bad[3] = other.display().to_string();
    bad.push("--resume".into());
    let o = util::bin().args(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("cannot resume") && stderr(&o).contains("model"),
        "{}",
        stderr(&o)
    );
}

/// Run `script` with `sh -e` inside a new user + mount namespace (`unshare`), where it
/// may mount its own tmpfs: read-only and full file systems without touching the
/// machine's mounts, and enforced even for root (which ignores permission bits).
/// `$VIT` is the binary under test (run under `timeout`, so a hang fails the test
/// instead of stalling it). Mounts vanish when the script ends.
fn in_mount_namespace(script: &str) -> std::process::Output {
    let o = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-ec", script])
        .env("VIT", env!("CARGO_BIN_EXE_vit-batch"))
        .env("ORT_DYLIB_PATH", util::ort_lib())
        .output()
        .expect("run unshare (util-linux)");
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("unshare failed"),
        "this test needs user + mount namespaces (unshare --user --mount): {}",
        stderr(&o)
    );
    o
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

#[test]
fn a_read_only_output_folder_is_a_clear_error_before_any_image_is_read() {
    let t = tempdir();
    let model = micro_model(t.path());
    let data = util::fixtures().join("digits/test");
    let lm = digit_label_map(t.path(), &data);
    let ro = t.path().join("ro");
    std::fs::create_dir_all(&ro).unwrap();
    let score = |out: &str, log: &str| {
        format!(
            "set +e; timeout -s KILL 120 \"$VIT\" score {} --model {} --label-map {} --quiet --out {} 2> {}; echo $? >> {}; set -e\n",
            sh_quote(&data),
            sh_quote(&model),
            sh_quote(&lm),
            sh_quote(&ro.join(out)),
            sh_quote(&t.path().join(log)),
            sh_quote(&t.path().join(format!("{log}.rc"))),
        )
    };
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs {ro}\nmkdir {ro}/existing\nmount -o remount,ro {ro}\n{}{}ls -A {ro} > {listing}\n",
        score("existing", "existing.log"),
        score("new/out", "new.log"),
        ro = sh_quote(&ro),
        listing = sh_quote(&t.path().join("listing")),
    );
    let o = in_mount_namespace(&script);
    assert!(o.status.success(), "{}", stderr(&o));
    for log in ["existing.log", "new.log"] {
        let rc = std::fs::read_to_string(t.path().join(format!("{log}.rc"))).unwrap();
        let err = std::fs::read_to_string(t.path().join(log)).unwrap();
        assert_eq!(rc.trim(), "2", "{log}: {err}");
        assert!(err.contains("Read-only file system"), "{log}: {err}");
        assert!(
            err.contains(&ro.display().to_string()),
            "{log}: names the path: {err}"
        );
        assert!(!err.contains("panicked"), "{log}: {err}");
        // Refused up front: no image was decoded or scored.
        assert!(!err.contains("images/s"), "{log}: {err}");
    }
    let listing = std::fs::read_to_string(t.path().join("listing")).unwrap();
    assert_eq!(listing.trim(), "existing", "nothing was written: {listing}");
}

#[test]
fn a_full_disk_fails_cleanly_and_resume_finishes_after_space_is_freed() {
    let t = tempdir();
    let model = micro_model(t.path());
    let data = util::fixtures().join("digits/train");
    let lm = digit_label_map(t.path(), &data);
    let score = |out: &Path, extra: &str| {
        format!(
            "timeout -s KILL 120 \"$VIT\" score {} --model {} --label-map {} --quiet --no-report --batch-size 16 --checkpoint-rows 100 --out {} {extra}",
            sh_quote(&data),
            sh_quote(&model),
            sh_quote(&lm),
            sh_quote(out),
        )
    };
    let full = t.path().join("uninterrupted");
    let o = in_mount_namespace(&score(&full, ""));
    assert!(o.status.success(), "{}", stderr(&o));

    // A 32 KiB file system holds a few checkpoint parts, not the whole run.
    let disk = t.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let out = disk.join("out");
    let saved = t.path().join("saved");
    let script = format!(
        "mount -t tmpfs -o size=32k tmpfs {disk}\n\
         set +e; {first} 2> {log}; echo $? > {log}.rc; set -e\n\
         ls -A {out} > {log}.ls; ls -A {out}/parts > {log}.parts || true\n\
         mount -o remount,size=64m {disk}\n\
         {resume}\n\
         mkdir {saved}; cp {out}/predictions.parquet {out}/metrics.json {saved}/\n",
        disk = sh_quote(&disk),
        first = score(&out, ""),
        resume = score(&out, "--resume"),
        log = sh_quote(&t.path().join("first")),
        out = sh_quote(&out),
        saved = sh_quote(&saved),
    );
    let o = in_mount_namespace(&script);
    assert!(o.status.success(), "resume failed: {}", stderr(&o));
    let log = |ext: &str| std::fs::read_to_string(t.path().join(format!("first{ext}"))).unwrap();
    let err = log("");
    assert_eq!(log(".rc").trim(), "2", "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let listing = log(".ls");
    assert!(
        !listing.contains("predictions.parquet") && !listing.contains("metrics.json"),
        "a failed run left final outputs: {listing}"
    );
    assert!(err.contains("rerun with --resume"), "{err}");
    let parts = log(".parts");
    assert!(
        !parts.contains(".tmp-"),
        "the failed part's temporary file was left behind: {parts}"
    );
    assert!(
        parts.lines().filter(|l| l.ends_with(".parquet")).count() >= 1,
        "no part was committed before the disk filled: {parts} / {listing}"
    );

    let a = read_parquet(&full.join("predictions.parquet")).unwrap();
    let b = read_parquet(&saved.join("predictions.parquet")).unwrap();
    assert_eq!(a.len(), 1437);
    assert_eq!(a, b, "resumed rows differ from the uninterrupted run");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(saved.join("metrics.json")).unwrap()).unwrap();
    assert!(
        m["throughput"]["scored"].as_u64().unwrap() < 1437,
        "resume rescored everything: {}",
        m["throughput"]
    );
}

#[test]
fn an_unreadable_file_is_an_error_row() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempdir();
    // Others must reach the files: root runs the binary as `nobody` below.
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let model = micro_model(t.path());
    let data = t.path().join("data");
    let src = util::fixtures().join("digits/test/4");
    let mut files: Vec<_> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files.iter().take(3) {
        write(
            &data.join("4").join(f.file_name().unwrap()),
            &std::fs::read(f).unwrap(),
        );
    }
    let locked = data.join("4/locked.png");
    write(&locked, &std::fs::read(&files[0]).unwrap());
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let lm = digit_label_map(t.path(), &data);
    let out_parent = t.path().join("outs");
    std::fs::create_dir_all(&out_parent).unwrap();
    std::fs::set_permissions(&out_parent, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = out_parent.join("run");
    let mut args = score_args(
        data.to_str().unwrap(),
        model.to_str().unwrap(),
        out.to_str().unwrap(),
        lm.to_str().unwrap(),
    );
    args.push("--no-report");
    // Root reads any file whatever its mode, so as root the binary runs as `nobody`.
    let is_root = unsafe { libc::geteuid() } == 0;
    let o = if is_root {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_vit-batch"))
            .args(&args)
            .env("ORT_DYLIB_PATH", util::ort_lib())
            .output()
            .expect("setpriv (util-linux)")
    } else {
        util::run(&args)
    };
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rows = read_parquet(&out.join("predictions.parquet")).unwrap();
    assert_eq!(rows.len(), 4, "every file has its row");
    let r = rows.iter().find(|r| r.path == "4/locked.png").unwrap();
    assert_eq!(r.status, Status::Error);
    let msg = r.error.as_deref().unwrap();
    assert!(msg.contains("Permission denied"), "{msg}");
    assert_eq!(rows.iter().filter(|r| r.status == Status::Ok).count(), 3);
}

// ---- Never lose or mix a user's data (issue #16) ----

/// The digits, twice over (3594 small real images), as classes 0..9 under `dir/data`.
fn digits_twice(dir: &Path) -> PathBuf {
    let root = dir.join("data");
    for split in ["train", "test"] {
        for c in 0..10 {
            let src = util::fixtures().join(format!("digits/{split}/{c}"));
            for e in std::fs::read_dir(src).unwrap() {
                let p = e.unwrap().path();
                let name = p.file_name().unwrap().to_str().unwrap().to_string();
                let bytes = std::fs::read(&p).unwrap();
                write(&root.join(format!("{c}/{split}-{name}")), &bytes);
                write(&root.join(format!("{c}/copy-{split}-{name}")), &bytes);
            }
        }
    }
    root
}

/// A second random-init vit-micro (seed 9), 10 labels, into `dir/other`.
fn other_model(dir: &Path) -> PathBuf {
    let m = dir.join("other");
    let o = run(&[
        "export",
        "--preset",
        "vit-micro",
        "--random-init",
        "--seed",
        "9",
        "--num-labels",
        "10",
        "--out",
        m.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    m
}

fn sha256_hex(p: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

/// Every file under `dir` (relative path -> bytes; a symlink by its target).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(dir).unwrap().to_path_buf();
        if e.path_is_symlink() {
            let t = std::fs::read_link(e.path()).unwrap();
            out.insert(rel, t.as_os_str().as_bytes().to_vec());
        } else if e.file_type().is_file() {
            out.insert(rel, std::fs::read(e.path()).unwrap());
        } else {
            out.insert(rel, b"<dir>".to_vec());
        }
    }
    out
}

/// `score` args of the slow runs below: one image per batch, a part every 10 rows.
fn slow_score_args(data: &Path, model: &Path, out: &Path, lm: &Path) -> Vec<String> {
    [
        "score",
        data.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--label-map",
        lm.to_str().unwrap(),
        "--quiet",
        "--no-report",
        "--batch-size",
        "1",
        "--checkpoint-rows",
        "10",
        "--threads",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Spawn `args` and wait until it has committed at least one part in `out/parts`.
fn spawn_until_a_part(args: &[String], out: &Path) -> std::process::Child {
    let mut child = util::bin().args(args).spawn().unwrap();
    let start = Instant::now();
    loop {
        let parts = std::fs::read_dir(out.join("parts"))
            .map(|d| {
                d.filter(|e| {
                    let e = e.as_ref().unwrap();
                    e.file_name().to_string_lossy().starts_with("part-")
                })
                .count()
            })
            .unwrap_or(0);
        if parts >= 1 || start.elapsed() > Duration::from_secs(60) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before committing a part"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

#[test]
fn a_second_writer_into_a_running_folder_is_refused_naming_the_pid() {
    let t = tempdir();
    let model = micro_model(t.path());
    let other = other_model(t.path());
    let data = digits_twice(t.path());
    let lm = digit_label_map(t.path(), &data);
    let out = t.path().join("run");
    let mut a = spawn_until_a_part(&slow_score_args(&data, &model, &out, &lm), &out);
    assert!(
        a.try_wait().unwrap().is_none(),
        "the first run finished too quickly"
    );
    let pid = a.id();
    // Another model into the same folder: with --overwrite, then without.
    for extra in [&["--overwrite"][..], &[][..]] {
        let mut b = slow_score_args(&data, &other, &out, &lm);
        b.extend(extra.iter().map(|s| s.to_string()));
        let o = util::bin().args(&b).output().unwrap();
        assert_no_panic(&o);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("pid {pid}")) && stderr(&o).contains("in use"),
            "{extra:?}: {}",
            stderr(&o)
        );
    }
    assert!(
        a.try_wait().unwrap().is_none(),
        "the first run ended while the second was refused: the check is not the lock"
    );
    assert!(a.wait().unwrap().success());
    // Every row is the first run's: one model, all rows, all scored by it.
    let sha = sha256_hex(&model.join("model.onnx"));
    assert_ne!(sha, sha256_hex(&other.join("model.onnx")));
    let id: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(id["model_sha256"], sha.as_str());
    assert_eq!(m["run"]["model_sha256"], sha.as_str());
    assert_eq!(m["throughput"]["scored"], 3594);
    assert_eq!(
        read_parquet(&out.join("predictions.parquet"))
            .unwrap()
            .len(),
        3594
    );
    assert!(!out.join("parts").exists());
}

#[test]
fn resume_refuses_a_part_another_model_committed() {
    let t = tempdir();
    let model = micro_model(t.path());
    let other = other_model(t.path());
    let data = digits_twice(t.path());
    let lm = digit_label_map(t.path(), &data);
    // Two unfinished runs of the same dataset and options, one per model.
    let mine = t.path().join("mine");
    let theirs = t.path().join("theirs");
    for (m, out) in [(&model, &mine), (&other, &theirs)] {
        let mut c = spawn_until_a_part(&slow_score_args(&data, m, out, &lm), out);
        c.kill().unwrap();
        c.wait().unwrap();
        assert!(
            !out.join("predictions.parquet").exists(),
            "finished too soon"
        );
    }
    // The other model's first part planted among this run's parts.
    let part = "part-0000000000-0000000010.parquet";
    std::fs::copy(
        theirs.join("parts").join(part),
        mine.join("parts").join(part),
    )
    .unwrap();
    let mut args = slow_score_args(&data, &model, &mine, &lm);
    args.push("--resume".into());
    let o = util::bin().args(&args).output().unwrap();
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("cannot resume") && e.contains(part) && e.contains("another run"),
        "{e}"
    );
    assert!(!mine.join("predictions.parquet").exists());
    assert!(mine.join("parts").join(part).exists(), "nothing is deleted");
    // Without the planted part the run resumes to the end.
    std::fs::remove_file(mine.join("parts").join(part)).unwrap();
    let o = util::bin().args(&args).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        read_parquet(&mine.join("predictions.parquet"))
            .unwrap()
            .len(),
        3594
    );
}

/// A pipeline file with one `[score]` table into `out`, `overwrite = true`.
fn score_pipeline(dir: &Path, data: &Path, model: &Path, out: &Path, lm: &Path) -> PathBuf {
    let p = dir.join("p.toml");
    std::fs::write(
        &p,
        format!(
            "[score]\ndata_dir = {:?}\nmodel = {:?}\nout = {:?}\nlabel_map = {:?}\noverwrite = true\n",
            data.display().to_string(),
            model.display().to_string(),
            out.display().to_string(),
            lm.display().to_string()
        ),
    )
    .unwrap();
    p
}

#[test]
fn overwrite_refuses_a_folder_holding_files_vit_batch_did_not_write() {
    let t = tempdir();
    let model = micro_model(t.path());
    let data = crate::score::small_dataset(t.path(), 2, 2);
    let lm = digit_label_map(t.path(), &data);
    let (d, m, l) = (
        data.to_str().unwrap(),
        model.to_str().unwrap(),
        lm.to_str().unwrap(),
    );
    // A folder of the user's own.
    let mine = t.path().join("mine");
    write(&mine.join("notes.txt"), b"my notes");
    write(&mine.join("charts/mine.png"), b"my chart");
    // A finished run where the user since put files of their own.
    let run_dir = t.path().join("run");
    let args = score_args(d, m, run_dir.to_str().unwrap(), l);
    assert_eq!(run(&args).status.code(), Some(0));
    write(&run_dir.join("keep.txt"), b"keep me");
    write(&run_dir.join("charts/annotated.png"), b"my annotated chart");
    for out in [&mine, &run_dir] {
        let before = snapshot(out);
        let mut ow = score_args(d, m, out.to_str().unwrap(), l);
        ow.push("--overwrite");
        let o = run(&ow);
        assert_no_panic(&o);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("did not write"), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("charts/") && stderr(&o).contains(&out.display().to_string()),
            "names the folder and the files: {}",
            stderr(&o)
        );
        assert_eq!(snapshot(out), before, "{}", out.display());
        // A pipeline with overwrite = true: refused before any stage runs.
        let p = score_pipeline(t.path(), &data, &model, out, &lm);
        let o = run(&["run", p.to_str().unwrap(), "--quiet"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("did not write"), "{}", stderr(&o));
        assert_eq!(snapshot(out), before, "{}", out.display());
    }
}

#[test]
fn out_dir_equal_to_inside_or_around_data_dir_is_refused_and_nothing_is_deleted() {
    let t = tempdir();
    let model = micro_model(t.path());
    let data = crate::score::small_dataset(t.path(), 2, 2);
    let lm = digit_label_map(t.path(), &data);
    // Class folders that share names with a run folder's own.
    let img = std::fs::read(
        util::fixtures()
            .join("digits/test/3")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    write(&data.join("charts/a.png"), &img);
    write(&data.join("parts/b.png"), &img);
    let before = snapshot(&data);
    let (d, m, l) = (
        data.to_str().unwrap(),
        model.to_str().unwrap(),
        lm.to_str().unwrap(),
    );
    let inside = data.join("0/run");
    let around = data.parent().unwrap().to_path_buf();
    for out in [&data, &inside, &around] {
        for extra in [&["--overwrite"][..], &[][..]] {
            let mut a = score_args(d, m, out.to_str().unwrap(), l);
            a.extend(extra);
            let o = run(&a);
            assert_no_panic(&o);
            assert_eq!(
                o.status.code(),
                Some(2),
                "{}: {}",
                out.display(),
                stderr(&o)
            );
            let e = stderr(&o);
            assert!(
                e.contains("DATA_DIR") && e.contains(d) && e.contains(&out.display().to_string()),
                "{e}"
            );
            assert_eq!(snapshot(&data), before, "{}", out.display());
        }
        // A pipeline checks it before any stage runs.
        let p = score_pipeline(t.path(), &data, &model, out, &lm);
        let o = run(&["run", p.to_str().unwrap(), "--quiet"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("DATA_DIR"), "{}", stderr(&o));
        assert_eq!(snapshot(&data), before);
    }
    assert!(!inside.exists());
}

#[test]
fn merge_into_one_of_its_shards_is_refused_and_the_shard_is_intact() {
    let t = tempdir();
    let model = micro_model(t.path());
    let data = crate::score::small_dataset(t.path(), 2, 3);
    let lm = digit_label_map(t.path(), &data);
    let shards: Vec<PathBuf> = (0..2)
        .map(|k| {
            let out = t.path().join(format!("s{k}"));
            let mut a = score_args(
                data.to_str().unwrap(),
                model.to_str().unwrap(),
                out.to_str().unwrap(),
                lm.to_str().unwrap(),
            );
            let sh = format!("{k}/2");
            a.extend(["--shard", sh.as_str()]);
            assert_eq!(run(&a).status.code(), Some(0));
            out
        })
        .collect();
    let before: Vec<_> = shards.iter().map(|s| snapshot(s)).collect();
    let (s0, s1) = (shards[0].to_str().unwrap(), shards[1].to_str().unwrap());
    let inside = shards[1].join("merged");
    for out in [s0, s1, inside.to_str().unwrap()] {
        let o = run(&["merge", s0, s1, "--out", out, "--overwrite"]);
        assert_no_panic(&o);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("shard") && stderr(&o).contains(out),
            "{}",
            stderr(&o)
        );
        for (s, b) in shards.iter().zip(&before) {
            assert_eq!(&snapshot(s), b, "{}", s.display());
        }
    }
    let merged = t.path().join("merged");
    let o = run(&["merge", s0, s1, "--out", merged.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn gate_files_inside_a_compared_run_are_refused_and_the_runs_are_intact() {
    let t = tempdir();
    let model = micro_model(t.path());
    let data = crate::score::small_dataset(t.path(), 2, 2);
    let lm = digit_label_map(t.path(), &data);
    let (base, cand) = (t.path().join("base"), t.path().join("cand"));
    for out in [&base, &cand] {
        let a = score_args(
            data.to_str().unwrap(),
            model.to_str().unwrap(),
            out.to_str().unwrap(),
            lm.to_str().unwrap(),
        );
        assert_eq!(run(&a).status.code(), Some(0));
    }
    let (b0, c0) = (snapshot(&base), snapshot(&cand));
    let (b, c) = (base.to_str().unwrap(), cand.to_str().unwrap());
    let cases = [
        ("--json", base.join("predictions.parquet")),
        ("--markdown", base.join("report.md")),
        ("--junit", cand.join("junit.xml")),
        ("--json", cand.join("sub/gate.json")),
    ];
    for (flag, p) in &cases {
        let o = run(&["compare", b, c, flag, p.to_str().unwrap()]);
        assert_no_panic(&o);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{flag} {}: {}",
            p.display(),
            stderr(&o)
        );
        let e = stderr(&o);
        assert!(
            e.contains(flag) && e.contains(&p.display().to_string()) && e.contains("run folder"),
            "{e}"
        );
        assert_eq!(snapshot(&base), b0);
        assert_eq!(snapshot(&cand), c0);
    }
    // A pipeline's [gate] is checked before any stage runs.
    let p = t.path().join("gate.toml");
    std::fs::write(
        &p,
        format!(
            "[gate]\nbaseline = {:?}\ncandidate = {:?}\njson = {:?}\n",
            b,
            c,
            base.join("predictions.parquet").display().to_string()
        ),
    )
    .unwrap();
    let o = run(&["run", p.to_str().unwrap(), "--quiet"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--json"), "{}", stderr(&o));
    assert_eq!(snapshot(&base), b0);
    // Outside both runs it is written.
    let ok = t.path().join("gate.json");
    let o = run(&["compare", b, c, "--json", ok.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(ok.exists());
}

#[test]
fn a_symlinked_charts_folder_is_refused_and_its_target_untouched() {
    let t = tempdir();
    let model = micro_model(t.path());
    let data = crate::score::small_dataset(t.path(), 2, 2);
    let lm = digit_label_map(t.path(), &data);
    let out = t.path().join("run");
    let (d, m, l) = (
        data.to_str().unwrap(),
        model.to_str().unwrap(),
        lm.to_str().unwrap(),
    );
    assert_eq!(
        run(&score_args(d, m, out.to_str().unwrap(), l))
            .status
            .code(),
        Some(0)
    );
    let elsewhere = t.path().join("elsewhere");
    write(&elsewhere.join("confusion.png"), b"not yours");
    for f in std::fs::read_dir(out.join("charts")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    std::fs::remove_dir(out.join("charts")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, out.join("charts")).unwrap();
    let target = snapshot(&elsewhere);
    let o = run(&["report", out.to_str().unwrap()]);
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    assert_eq!(snapshot(&elsewhere), target);
    for flag in ["--overwrite", "--resume"] {
        let mut a = score_args(d, m, out.to_str().unwrap(), l);
        a.push(flag);
        let o = run(&a);
        assert_eq!(o.status.code(), Some(2), "{flag}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("symbolic link"),
            "{flag}: {}",
            stderr(&o)
        );
        assert_eq!(snapshot(&elsewhere), target, "{flag}");
    }
    assert!(std::fs::symlink_metadata(out.join("charts"))
        .unwrap()
        .file_type()
        .is_symlink());
}

/// Links leaving DATA_DIR (a class folder linked to /proc, an image linked from
/// elsewhere) are not followed by default; names that escape alike stay two paths;
/// control characters in names never reach the terminal raw.
#[test]
fn links_out_of_the_dataset_names_and_control_characters() {
    let t = tempdir();
    let model = micro_model(t.path());
    let data = t.path().join("data");
    let digit = |c: u32, i: usize| {
        let dir = util::fixtures().join(format!("digits/test/{c}"));
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        std::fs::read(&files[i]).unwrap()
    };
    write(&data.join("0/a.png"), &digit(0, 0));
    // Sibling names that a naive \xNN escape would merge: a raw 0xFF byte and the
    // four characters `\xFF`.
    write(
        &data
            .join("0")
            .join(std::ffi::OsStr::from_bytes(b"x\xFF.png")),
        &digit(0, 1),
    );
    write(&data.join("0/x\\xFF.png"), &digit(0, 2));
    let elsewhere = t.path().join("elsewhere");
    write(&elsewhere.join("1.png"), &digit(1, 0));
    std::fs::create_dir_all(data.join("1")).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("1.png"), data.join("1/linked.png")).unwrap();
    std::os::unix::fs::symlink("/proc", data.join("2")).unwrap();
    // An (empty) class folder whose name would clear the line and rewrite it.
    std::fs::create_dir_all(data.join("e\u{1b}[2K\rPASS")).unwrap();
    let lm = digit_label_map(t.path(), &data);
    let out = t.path().join("run");
    let (d, m, l) = (
        data.to_str().unwrap(),
        model.to_str().unwrap(),
        lm.to_str().unwrap(),
    );
    let loud = |o: &str, extra: &[&str]| {
        let mut a: Vec<&str> = score_args(d, m, o, l)
            .into_iter()
            .filter(|x| *x != "--quiet")
            .collect();
        a.extend(extra);
        let o = run(&a);
        assert_no_panic(&o);
        o
    };
    let started = Instant::now();
    let o = loud(out.to_str().unwrap(), &["--no-report"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "did not walk /proc"
    );
    let e = stderr(&o);
    assert!(
        !e.contains('\u{1b}') && !e.contains('\r'),
        "raw control characters: {e:?}"
    );
    assert!(e.contains("e\\u{1b}[2K\\rPASS"), "{e}");
    let rows = read_parquet(&out.join("predictions.parquet")).unwrap();
    let paths: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        vec!["0/a.png", "0/x\\\\xFF.png", "0/x\\xFF.png", "1/linked.png"]
    );
    assert_eq!(rows.iter().filter(|r| r.status == Status::Ok).count(), 3);
    let linked = &rows[3];
    assert!(
        linked
            .error
            .as_deref()
            .unwrap()
            .contains("outside the dataset folder"),
        "{linked:?}"
    );
    let mj: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    let warnings = mj["run"]["warnings"].to_string();
    assert!(warnings.contains("2 -> /proc"), "{warnings}");
    // The run is complete: --resume has nothing left to score.
    let o = loud(out.to_str().unwrap(), &["--resume", "--no-report"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("already complete"), "{}", stderr(&o));
    // --follow-links follows the image link (never /proc here: remove it first).
    std::fs::remove_file(data.join("2")).unwrap();
    digit_label_map(t.path(), &data);
    let out2 = t.path().join("run2");
    let o = loud(out2.to_str().unwrap(), &["--follow-links", "--no-report"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rows = read_parquet(&out2.join("predictions.parquet")).unwrap();
    assert!(rows.iter().all(|r| r.status == Status::Ok), "{rows:?}");
}
