//! ONNX Runtime's shared library: find it, check it, load it once.
//!
//! `ort` is built with `load-dynamic`, so the library is found at run time. Left to
//! itself, `ort` would panic inside the first call when the library is missing; here
//! the path is resolved up front (flag, `ORT_DYLIB_PATH`, the project's own install
//! made by `scripts/setup`) and loaded with `ort::init_from`, so a missing or too old
//! library is a clear error that says how to install it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

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
    for root in project_roots() {
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

/// The OpenVINO plugin EP (PyPI `onnxruntime-ep-openvino`) that `scripts/setup
/// --openvino` installs and the tests run against; written once, in
/// `scripts/openvino-ep-version`, which `scripts/setup` reads too.
pub const PINNED_OPENVINO_EP_VERSION: &str =
    include_str!("../scripts/openvino-ep-version").trim_ascii();
/// The plugin's execution-provider name (its devices carry it).
pub(crate) const OPENVINO_EP_NAME: &str = "OpenVINOExecutionProvider";
/// The plugin library's file name inside its folder.
pub(crate) const OPENVINO_PLUGIN_FILE: &str = "libonnxruntime_providers_openvino_plugin.so";
/// The environment variable naming the plugin library (after the flag).
pub const OPENVINO_ENV: &str = "VIT_BATCH_OPENVINO_LIB";

/// The OpenVINO plugin EP that was registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenVinoInfo {
    /// Path of the plugin library.
    pub plugin: String,
    /// The plugin's version (`onnxruntime-ep-openvino`).
    pub plugin_version: String,
    /// The OpenVINO runtime's version (beside the plugin).
    pub openvino_version: String,
}

static OPENVINO: OnceLock<OpenVinoInfo> = OnceLock::new();

fn openvino_how_to_install() -> String {
    format!(
        "install it with `scripts/setup --openvino` (the pinned onnxruntime-ep-openvino {PINNED_OPENVINO_EP_VERSION} wheel, unpacked under .ort/), or point {} or {OPENVINO_ENV} at {OPENVINO_PLUGIN_FILE}",
        crate::error::option_name("openvino_lib")
    )
}

/// Where we look for the OpenVINO plugin, in order.
pub(crate) fn openvino_candidates(explicit: Option<&Path>) -> Vec<(PathBuf, &'static str)> {
    if let Some(p) = explicit {
        return vec![(p.to_path_buf(), "--openvino-lib")];
    }
    if let Ok(p) = std::env::var(OPENVINO_ENV) {
        if !p.is_empty() {
            return vec![(PathBuf::from(p), OPENVINO_ENV)];
        }
    }
    let dir = format!("openvino-ep-{PINNED_OPENVINO_EP_VERSION}");
    project_roots()
        .into_iter()
        .map(|root| {
            (
                root.join(".ort").join(&dir).join(OPENVINO_PLUGIN_FILE),
                "project install (.ort/)",
            )
        })
        .collect()
}

/// The repository that built this binary (walking up from the executable), then the
/// current folder: where `.ort/` is looked for.
fn project_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(5).map(Path::to_path_buf));
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    roots
}

/// Register the OpenVINO plugin EP with the environment of [`init`] (once per
/// process) and check that it offers a CPU device. Not installed, not loadable or no
/// CPU device: an error saying how to install it, never a fall-back.
pub fn register_openvino(explicit: Option<&Path>) -> Result<&'static OpenVinoInfo> {
    if let Some(info) = OPENVINO.get() {
        return Ok(info);
    }
    let env = environment()?;
    let cands = openvino_candidates(explicit);
    let Some((path, source)) = cands.iter().find(|(p, _)| p.is_file()).cloned() else {
        let tried: Vec<String> = cands
            .iter()
            .map(|(p, s)| format!("  {} ({s})", p.display()))
            .collect();
        return Err(Error::Runtime {
            what: format!(
                "provider openvino: the OpenVINO execution provider plugin is not installed; looked at:\n{}\n{}",
                tried.join("\n"),
                openvino_how_to_install()
            ),
        });
    };
    env.register_ep_library("openvino", &path)
        .map_err(|e| Error::Runtime {
            what: format!(
                "provider openvino: cannot register {} (from {source}) with ONNX Runtime: {e}\n{}",
                path.display(),
                openvino_how_to_install()
            ),
        })?;
    if openvino_cpu_devices(env).is_empty() {
        return Err(Error::Runtime {
            what: format!(
                "provider openvino: the plugin {} offers no CPU device (devices: {}); reinstall it: {}",
                path.display(),
                describe_devices(env),
                openvino_how_to_install()
            ),
        });
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let info = OpenVinoInfo {
        plugin: path.display().to_string(),
        plugin_version: plugin_version(&path),
        openvino_version: openvino_version(dir),
    };
    let _ = OPENVINO.set(info);
    Ok(OPENVINO.get().expect("set above"))
}

/// The plugin's CPU devices (`OpenVINOExecutionProvider`, hardware type CPU; the
/// `.AUTO` meta-device is not one of them).
pub(crate) fn openvino_cpu_devices(
    env: &ort::environment::Environment,
) -> Vec<ort::device::Device<'_>> {
    env.devices()
        .filter(|d| {
            d.ep().is_ok_and(|ep| ep == OPENVINO_EP_NAME)
                && d.hardware_device().ty() == ort::memory::DeviceType::CPU
        })
        .collect()
}

fn describe_devices(env: &ort::environment::Environment) -> String {
    let all: Vec<String> = env
        .devices()
        .map(|d| format!("{} {:?}", d.ep().unwrap_or("?"), d.hardware_device().ty()))
        .collect();
    if all.is_empty() {
        "none".into()
    } else {
        all.join(", ")
    }
}

/// The plugin's version: its versioned sibling file (`...plugin.so.1.8.1`, as the
/// wheel ships it), else what the project pins when the name carries none.
fn plugin_version(path: &Path) -> String {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let prefix = format!("{name}.");
    let mut best: Option<String> = None;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let f = e.file_name();
            let Some(v) = f.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
                continue;
            };
            if v.split('.').count() == 3 && v.split('.').all(|p| p.parse::<u32>().is_ok()) {
                best = Some(v.to_string());
            }
        }
    }
    best.unwrap_or_else(|| format!("unknown (no {name}.X.Y.Z beside it)"))
}

/// OpenVINO's version, read from `libopenvino.so.*` beside the plugin: the library
/// embeds its build string (`2026.4.1-22982-...`) as plain text.
fn openvino_version(dir: &Path) -> String {
    let lib = std::fs::read_dir(dir).ok().and_then(|rd| {
        rd.flatten().map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libopenvino.so."))
        })
    });
    let Some(lib) = lib else {
        return "unknown (no libopenvino.so.* beside the plugin)".into();
    };
    match std::fs::read(&lib) {
        Ok(bytes) => find_build_string(&bytes)
            .unwrap_or_else(|| format!("unknown (no version string in {})", lib.display())),
        Err(e) => format!("unknown ({}: {e})", lib.display()),
    }
}

/// The first `YYYY.M.P-BUILD-...` string (NUL-terminated) in `bytes`.
fn find_build_string(bytes: &[u8]) -> Option<String> {
    bytes.split(|&b| b == 0).find_map(|s| {
        let s = std::str::from_utf8(s).ok()?;
        let mut it = s.splitn(3, '-');
        let ver = it.next()?;
        let build = it.next()?;
        let parts: Vec<&str> = ver.split('.').collect();
        let ok = parts.len() == 3
            && parts[0].len() == 4
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            && !build.is_empty()
            && build.bytes().all(|b| b.is_ascii_digit())
            && s.len() < 100;
        ok.then(|| s.to_string())
    })
}

/// The CPU the run used and its instruction-set flags that decide inference speed
/// and bf16 support, from `/proc/cpuinfo`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CpuInfo {
    /// `model name` of the first processor.
    pub model: String,
    /// Which of [`CPU_FLAGS`] it has, in that order.
    pub flags: Vec<String>,
}

/// The ISA flags recorded with every run.
pub const CPU_FLAGS: &[&str] = &[
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
];

impl CpuInfo {
    /// This machine's CPU (an unknown model and no flags where `/proc/cpuinfo` is
    /// missing).
    pub fn detect() -> CpuInfo {
        let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self::parse(&text)
    }

    pub(crate) fn parse(text: &str) -> CpuInfo {
        let field = |key: &str| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == key).then(|| v.trim().to_string())
            })
        };
        let have: Vec<String> = field("flags")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        CpuInfo {
            model: field("model name").unwrap_or_else(|| "unknown".into()),
            flags: CPU_FLAGS
                .iter()
                .filter(|f| have.iter().any(|h| h == *f))
                .map(|f| f.to_string())
                .collect(),
        }
    }

    /// Whether the CPU computes in bf16 natively (AVX512-BF16 or AMX-BF16).
    pub fn has_bf16(&self) -> bool {
        self.flags
            .iter()
            .any(|f| f == "avx512_bf16" || f == "amx_bf16")
    }

    /// `model (flag flag ...)`, for report headers.
    pub fn summary(&self) -> String {
        if self.flags.is_empty() {
            format!("{} (none of {})", self.model, CPU_FLAGS.join(" "))
        } else {
            format!("{} ({})", self.model, self.flags.join(" "))
        }
    }
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

    #[test]
    fn cpu_flags_are_read_from_cpuinfo() {
        let text = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n\nprocessor\t: 1\n";
        let c = CpuInfo::parse(text);
        assert_eq!(c.model, "Intel(R) Xeon(R) Processor");
        assert_eq!(c.flags, ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]);
        assert!(c.has_bf16());
        let zen = CpuInfo::parse("model name : AMD EPYC 7B13\nflags : avx avx2 fma\n");
        assert_eq!(zen.flags, ["avx2"]);
        assert!(!zen.has_bf16());
        assert_eq!(CpuInfo::parse("").model, "unknown");
    }

    #[test]
    fn openvino_build_string_is_found() {
        let bytes =
            b"\0junk\x002026.4\0 2026.4.1\x002026.4.1-22982-e213a147257-releases/2026/4\0tail";
        assert_eq!(
            find_build_string(bytes).as_deref(),
            Some("2026.4.1-22982-e213a147257-releases/2026/4")
        );
        assert_eq!(find_build_string(b"1.2.3-4\0"), None);
    }

    #[test]
    fn missing_openvino_plugin_names_the_install_command() {
        let c = openvino_candidates(Some(Path::new("/nope/plugin.so")));
        assert_eq!(
            c,
            vec![(PathBuf::from("/nope/plugin.so"), "--openvino-lib")]
        );
    }
}
