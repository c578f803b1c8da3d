//! Writing files so that a reader never sees half of one.
//!
//! Why it exists: every output of vit-batch (run files, Parquet, models, reports,
//! checkpoints) is written the same way: into a temporary file in the destination's
//! folder, created with its final mode (0644 less the umask, never a chmod after the
//! fact), synced, then renamed over the destination. A failure removes the temporary
//! file and reports the first OS error the writes met, even when the encoder on top
//! of them (Parquet's, say) only says "transport error".

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// Mode of every file vit-batch writes (the umask still applies, as for any file).
const FILE_MODE: u32 = 0o644;

/// The file under the buffer: remembers the first I/O error written through it.
struct Noting {
    file: File,
    first_error: Option<std::io::Error>,
}

impl Noting {
    fn note(&mut self, e: &std::io::Error) {
        if self.first_error.is_none() {
            self.first_error = Some(std::io::Error::new(e.kind(), e.to_string()));
        }
    }
}

impl Write for Noting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf).inspect_err(|e| self.note(e))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush().inspect_err(|e| self.note(e))
    }
}

/// A buffered temporary output file handed to the closure of [`atomic_write`].
pub struct OutFile(BufWriter<Noting>);

impl Write for OutFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_all(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Write `path` atomically: `write` fills a temporary file in the same folder, which
/// is then flushed, synced and renamed over `path`. On failure the temporary file is
/// removed and the error names `path` and the first OS error met.
pub fn atomic_write(path: &Path, write: impl FnOnce(&mut OutFile) -> Result<()>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".vit-batch-tmp-")
        .permissions(std::fs::Permissions::from_mode(FILE_MODE))
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    let (file, tmp_path) = tmp.into_parts();
    let mut out = OutFile(BufWriter::with_capacity(
        1 << 20,
        Noting {
            file,
            first_error: None,
        },
    ));
    let written = write(&mut out).and_then(|()| out.flush().map_err(|e| Error::io(path, e)));
    if let Err(e) = written {
        let first = out.0.get_mut().first_error.take();
        return Err(match (e, first) {
            (_, Some(io)) => Error::io(path, io),
            (e @ Error::Io { .. }, None) => e,
            (other, None) => Error::Write {
                path: path.to_path_buf(),
                cause: other.to_string(),
            },
        });
    }
    out.0
        .get_ref()
        .file
        .sync_all()
        .map_err(|e| Error::io(path, e))?;
    tmp_path
        .persist(path)
        .map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// [`atomic_write`] of a byte string.
pub fn atomic_write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write(path, |f| f.write_all(bytes).map_err(|e| Error::io(path, e)))
}

/// Prepare `out` for a command that writes a folder of its own (`export`'s model
/// folder, `train`'s checkpoint): created when missing; an existing folder must be
/// empty or hold `marker` from an earlier run of that command, whose files are then
/// replaced one by one. `out` may be none of `inputs`, nor inside one of them.
pub(crate) fn prepare_owned_dir(out: &Path, marker: &str, inputs: &[&Path]) -> Result<()> {
    if let Ok(o) = out.canonicalize() {
        for i in inputs {
            if let Ok(i) = i.canonicalize() {
                if o == i || o.starts_with(&i) {
                    return Err(Error::OutDir {
                        dir: out.to_path_buf(),
                        what: format!("is inside the input {}; choose another folder", i.display()),
                    });
                }
            }
        }
    }
    if !out.exists() {
        return std::fs::create_dir_all(out).map_err(|e| Error::io(out, e));
    }
    if !out.is_dir() {
        return Err(Error::OutDir {
            dir: out.to_path_buf(),
            what: "exists and is not a folder".into(),
        });
    }
    let empty = std::fs::read_dir(out)
        .map_err(|e| Error::io(out, e))?
        .next()
        .is_none();
    if !empty && !out.join(marker).exists() {
        return Err(Error::OutDir {
            dir: out.to_path_buf(),
            what: format!(
                "is not empty and holds no {marker} from a previous run; choose an empty or new folder"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_whole_file_with_its_mode_and_leaves_no_temp_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.txt");
        atomic_write_bytes(&p, b"hello").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"hello");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        // 0644 less whatever the umask takes away; never the tempfile default 0600.
        assert_eq!(mode & 0o600, 0o600);
        assert_eq!(mode & !FILE_MODE, 0);
        let failed = atomic_write(&d.path().join("b.txt"), |_| {
            Err(Error::Config {
                what: "boom".into(),
            })
        });
        assert!(failed.is_err());
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.txt")]);
    }
}
