//! ONNX Runtime's shared library: find it, check it, load it once.
//!
//! `ort` is built with `load-dynamic`, so the library is found at run time. Left to
//! itself, `ort` would panic inside the first call when the library is missing; here
//! the path is resolved up front (flag, `ORT_DYLIB_PATH`, the project's own install
//! made by `scripts/setup`) and loaded with `ort::init_from`, so a missing or too old
//! library is a clear error that says how to install it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The version `scripts/setup` installs and the tests run against.
/// Written once, in `scripts/ort-version`, which `scripts/setup` reads too.
pub const PINNED_ORT_VERSION: &str = include_str!("../scripts/ort-version").trim_ascii();
/// The oldest ONNX Runtime the `ort` API level we build with accepts (`api-22`).
pub(crate) const MIN_ORT_MINOR: u32 = 22;

const HOW_TO_INSTALL: &str = "install it with `scripts/setup` (pinned ONNX Runtime from the onnxruntime wheel; `scripts/setup --gpu` for CUDA), or point the ort_lib option (--ort-lib) or ORT_DYLIB_PATH at libonnxruntime.so.<version>";

/// The ONNX Runtime library that was loaded.
#[derive(Debug, Clone)]
pub struct RuntimeInfo {
    /// Its path.
    pub library: PathBuf,
    /// Its version (from the file name).
    pub version: String,
}

static RUNTIME: OnceLock<(ort::environment::Environment, RuntimeInfo)> = OnceLock::new();

/// Where we look for the library, in order. `gpu` prefers the CUDA build.
pub(crate) fn candidates(explicit: Option<&Path>, gpu: bool) -> Vec<(PathBuf, &'static str)> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        out.push((p.to_path_buf(), "--ort-lib"));
        return out;
    }
    if let Ok(p) = std::env::var("ORT_DYLIB_PATH") {
        if !p.is_empty() {
            out.push((PathBuf::from(p), "ORT_DYLIB_PATH"));
            return out;
        }
    }
    let file = format!("libonnxruntime.so.{PINNED_ORT_VERSION}");
    let dirs: Vec<String> = if gpu {
        vec![
            format!("{PINNED_ORT_VERSION}-gpu"),
            PINNED_ORT_VERSION.into(),
        ]
    } else {
        vec![
            PINNED_ORT_VERSION.into(),
            format!("{PINNED_ORT_VERSION}-gpu"),
        ]
    };
    // The project's install: `.ort/` in the repository that built this binary (found
    // by walking up from the executable), then in the current folder.
    let mut roots = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(5).map(Path::to_path_buf));
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    for root in roots {
        for d in &dirs {
            out.push((
                root.join(".ort").join(d).join(&file),
                "project install (.ort/)",
            ));
        }
    }
    out
}

/// Load ONNX Runtime once per process and return its description.
pub fn init(explicit: Option<&Path>, gpu: bool) -> Result<&'static RuntimeInfo> {
    if let Some((_, info)) = RUNTIME.get() {
        return Ok(info);
    }
    let cands = candidates(explicit, gpu);
    let Some((path, source)) = cands.iter().find(|(p, _)| p.is_file()).cloned() else {
        let tried: Vec<String> = cands
            .iter()
            .map(|(p, s)| format!("  {} ({s})", p.display()))
            .collect();
        return Err(Error::Runtime {
            what: format!(
                "ONNX Runtime library not found; looked at:\n{}\n{HOW_TO_INSTALL}",
                tried.join("\n")
            ),
        });
    };
    let builder = ort::init_from(&path).map_err(|e| Error::Runtime {
        what: format!(
            "cannot load {} (from {source}): {e}\nvit-batch needs ONNX Runtime >= 1.{MIN_ORT_MINOR} (tested with {PINNED_ORT_VERSION}); {HOW_TO_INSTALL}",
            path.display()
        ),
    })?;
    let env = builder
        .with_name("vit-batch")
        .with_telemetry(false)
        .build()
        .map_err(|e| Error::Runtime {
            what: format!("cannot create the ONNX Runtime environment: {e}"),
        })?;
    let version = library_version(&path);
    let info = RuntimeInfo {
        library: path,
        version,
    };
    let _ = RUNTIME.set((env, info));
    Ok(&RUNTIME.get().expect("set above").1)
}

/// The environment created by [`init`] (which must have succeeded).
pub fn environment() -> Result<&'static ort::environment::Environment> {
    RUNTIME.get().map(|(e, _)| e).ok_or_else(|| Error::Runtime {
        what: "ONNX Runtime is not initialised".into(),
    })
}

fn library_version(path: &Path) -> String {
    // `libonnxruntime.so.1.31.1` carries its version in the name; `ort` has already
    // checked the API level, so this is for the run's metadata.
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.strip_prefix("libonnxruntime.so.")
        .map(str::to_string)
        .unwrap_or_else(|| "unknown (library file name has no version)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_path_wins_and_missing_library_is_a_clear_error() {
        let c = candidates(Some(Path::new("/nope/libonnxruntime.so.1.31.1")), false);
        assert_eq!(c.len(), 1);
        let err = init(Some(Path::new("/nope/libonnxruntime.so.1.31.1")), false);
        if RUNTIME.get().is_none() {
            let msg = err.unwrap_err().to_string();
            assert!(
                msg.contains("not found") && msg.contains("scripts/setup"),
                "{msg}"
            );
        }
    }

    #[test]
    fn not_a_library_is_an_error_not_a_panic() {
        let t = tempfile::tempdir().unwrap();
        let fake = t.path().join("libonnxruntime.so.1.31.1");
        std::fs::write(&fake, b"not an ELF").unwrap();
        if RUNTIME.get().is_none() {
            let msg = init(Some(&fake), false).unwrap_err().to_string();
            assert!(msg.contains("cannot load"), "{msg}");
        }
    }
}
