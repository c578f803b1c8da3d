//! Stage 1's front door: which reader lists a dataset, and how one entry's image bytes
//! are read back, whatever the source (a file, a tar member, a Parquet row).
//!
//! Why it exists: `score` lists and reads images, and so does `report` (thumbnails of
//! the hardest mistakes, read again from the source after the run). Both go through
//! here, so a new source is one reader module plus one arm in each function below, and
//! the report finds a WebDataset sample or a Parquet row exactly as scoring did.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::options::DatasetFormat;
use crate::walk::{Dataset, Entry, Member};

/// An image's bytes and the decoding hint of its extension, or why they cannot be read.
pub(crate) type ImageBytes = std::result::Result<(Vec<u8>, Option<&'static str>), String>;

/// How to list a dataset: the reader and its options.
#[derive(Debug, Clone)]
pub(crate) struct SourceSpec<'a> {
    pub format: DatasetFormat,
    /// The dataset argument: a folder, a manifest, shards, Parquet files or a glob.
    pub data: &'a Path,
    /// Manifests: the folder relative paths are relative to (default: the manifest's).
    pub root: Option<&'a Path>,
    pub path_column: &'a str,
    pub label_column: &'a str,
    pub follow_links: bool,
}

/// List the dataset. Labels given as class ids (manifests, WebDataset `cls`, Parquet
/// labels without ClassLabel names) become `model_labels`' names (when given).
pub(crate) fn list(spec: &SourceSpec, model_labels: Option<&[String]>) -> Result<Dataset> {
    let mut ds = match spec.format {
        DatasetFormat::Folder => return crate::walk::walk(spec.data, spec.follow_links),
        DatasetFormat::Manifest => crate::manifest::read(
            spec.data,
            &crate::manifest::ManifestSpec {
                path_column: spec.path_column,
                label_column: spec.label_column,
                root: spec.root,
            },
        )?,
        DatasetFormat::Wds => crate::wds::read(spec.data)?,
        DatasetFormat::HfParquet => crate::hf::read(spec.data, spec.label_column)?,
    };
    if let Some(labels) = model_labels {
        crate::manifest::resolve_label_ids(&mut ds, labels)?;
    }
    Ok(ds)
}

/// The folder a manifest's relative paths resolve against.
pub(crate) fn manifest_root(data: &Path, root: Option<&Path>) -> PathBuf {
    match root {
        Some(r) => r.to_path_buf(),
        None => data
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
    }
}

/// Reads entries' image bytes; keeps the Parquet row group last read (see
/// [`crate::hf::RowGroupCache`]), so one reader should serve entries in order.
#[derive(Default)]
pub(crate) struct ImageReader {
    row_groups: crate::hf::RowGroupCache,
}

impl ImageReader {
    /// The bytes of `e`'s image (at most `max` bytes, else an error) and the decoding
    /// hint of its extension.
    pub(crate) fn read(&mut self, e: &Entry, max: u64) -> ImageBytes {
        if let Some(p) = &e.problem {
            return Err(p.clone());
        }
        match &e.member {
            None => crate::preprocess::read_bounded(&e.path, max).map(|b| {
                let ext = e
                    .path
                    .extension()
                    .and_then(|x| x.to_str())
                    .map(crate::walk::image_extension)
                    .and_then(|i| crate::walk::IMAGE_EXTENSIONS.get(i as usize).copied());
                (b, ext)
            }),
            Some(m @ Member::Tar { offset, len, .. }) => {
                crate::wds::read_member(&e.path, *offset, *len, max).map(|b| (b, m.ext()))
            }
            Some(m @ Member::ParquetRow { group, row, .. }) => self
                .row_groups
                .image(&e.path, *group as usize, *row as usize, max)
                .map(|b| (b, m.ext())),
        }
    }
}

/// What a run recorded about its source, enough to read its images again.
#[derive(Debug, Clone)]
pub(crate) struct RecordedSource<'a> {
    pub format: &'a str,
    pub data_dir: &'a Path,
    /// A manifest's image root, or a Hugging Face label column, as recorded.
    pub image_root: Option<&'a Path>,
    pub label_column: Option<&'a str>,
}

/// The image bytes of the rows recorded as `paths` (each with its extension hint),
/// read from the run's source: a folder or manifest by path, WebDataset shards and
/// Parquet files by listing them again and reading the entries named. One result per
/// path, in order.
pub(crate) fn recorded_images(src: &RecordedSource, paths: &[&str], max: u64) -> Vec<ImageBytes> {
    let by_file = |root: &Path| -> Vec<_> {
        paths
            .iter()
            .map(|p| {
                let e = Entry {
                    rel: p.to_string(),
                    path: root.join(crate::walk::path_from_string(p)).into(),
                    class: "".into(),
                    size: 0,
                    problem: None,
                    extra: Box::default(),
                    member: None,
                };
                ImageReader::default()
                    .read(&e, max)
                    .map_err(|m| format!("not readable any more ({m})"))
            })
            .collect()
    };
    let container = |format: DatasetFormat| {
        let spec = SourceSpec {
            format,
            data: src.data_dir,
            root: None,
            path_column: "path",
            label_column: src.label_column.unwrap_or("label"),
            follow_links: false,
        };
        let ds = match list(&spec, None) {
            Ok(ds) => ds,
            Err(e) => {
                let m = format!("the dataset cannot be listed again ({e})");
                return paths.iter().map(|_| Err(m.clone())).collect();
            }
        };
        // In the listing's order, so each row group is read once.
        let mut wanted: Vec<(usize, usize)> = paths
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                ds.entries
                    .binary_search_by(|e| e.rel.as_bytes().cmp(p.as_bytes()))
                    .ok()
                    .map(|j| (j, i))
            })
            .collect();
        wanted.sort_unstable();
        let mut out: Vec<ImageBytes> = paths
            .iter()
            .map(|_| Err("not in the dataset any more".to_string()))
            .collect();
        let mut reader = ImageReader::default();
        for (j, i) in wanted {
            out[i] = reader.read(&ds.entries[j], max);
        }
        out
    };
    match src.format {
        "manifest" => by_file(src.image_root.unwrap_or(src.data_dir)),
        "wds" => container(DatasetFormat::Wds),
        "hf-parquet" => container(DatasetFormat::HfParquet),
        _ => by_file(src.data_dir),
    }
}
