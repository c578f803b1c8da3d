//! Stage 1 for Hugging Face `datasets` Parquet shards, read in place.
//!
//! Why it exists: datasets on the Hugging Face Hub (and anything written by
//! `Dataset.to_parquet`) are Parquet files with the encoded image in a struct column
//! (`image` = struct<bytes, path>), an integer `label` whose class names are in the
//! `huggingface` key of the file's schema metadata (`info.features.label.names`, a
//! `ClassLabel`), and the user's other columns. A user must not have to unpack them.
//!
//! The files are read with polars-parquet's low-level reader (the crate polars already
//! builds), one row group at a time: listing keeps each row's label, carried columns and
//! image size, never the bytes; scoring loads one row group's image column at a time into
//! a [`RowGroupCache`] owned by the decoding thread. So memory is bounded by a row group,
//! whatever the shard size. Rows keep the files' order (files sorted by name, rows in
//! file order), which is also the order that reads each row group once. A row is
//! recorded under the image's own `path` (as `datasets` keeps the name of the file it
//! was built from) when every row has one and they increase in that order, so they are
//! distinct and sorted like every run's rows; else as `FILE#row=NNN` (the file relative
//! to the dataset argument, the row number zero-padded to the file's row count: sorted
//! by construction).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use polars::prelude::{Column, Series};
use polars_arrow::array::{Array, BinaryArray, BinaryViewArray, StructArray};
use polars_arrow::datatypes::{ArrowDataType, ArrowSchema, Field as ArrowField};
use polars_parquet::read::{self as pq, BasicDecompressor, FileMetadata, PageReader};

use crate::error::{Error, Result};
use crate::record::Extra;
use crate::walk::{Dataset, Entry, Member};

fn bad(file: &Path, what: impl std::fmt::Display) -> Error {
    Error::Dataset {
        what: format!("{}: {what}", file.display()),
    }
}

/// The Parquet files named by `arg`, each with the name its rows are recorded under:
/// one `.parquet` file (its file name), a folder (every `*.parquet` below it, by
/// relative path), or a glob pattern (each match's path as given, sorted).
pub(crate) fn files(arg: &Path) -> Result<Vec<(PathBuf, String)>> {
    let s = arg.to_string_lossy();
    let mut v: Vec<(PathBuf, String)> = if arg.is_file() {
        let name = arg
            .file_name()
            .map(|n| crate::walk::path_to_string(Path::new(n)))
            .unwrap_or_default();
        vec![(arg.to_path_buf(), name)]
    } else if arg.is_dir() {
        walkdir::WalkDir::new(arg)
            .follow_links(false)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file() && is_parquet(e.path()))
            .map(|e| {
                let rel = e.path().strip_prefix(arg).unwrap_or(e.path());
                (e.path().to_path_buf(), crate::walk::path_to_string(rel))
            })
            .collect()
    } else if s.contains(['*', '?', '[']) {
        let paths =
            glob::glob(&s).map_err(|e| bad(arg, format!("not a valid glob pattern: {e}")))?;
        paths
            .filter_map(|p| p.ok())
            .filter(|p| p.is_file())
            .map(|p| {
                let name = crate::walk::path_to_string(&p);
                (p, name)
            })
            .collect()
    } else {
        return Err(bad(arg, "no such file or folder"));
    };
    v.sort_by(|a, b| a.1.as_bytes().cmp(b.1.as_bytes()));
    if v.is_empty() {
        return Err(bad(arg, "names no .parquet file"));
    }
    Ok(v)
}

fn is_parquet(p: &Path) -> bool {
    p.extension()
        .is_some_and(|x| x.eq_ignore_ascii_case("parquet"))
}

/// True when `arg` reads as Hugging Face Parquet: a glob, a folder whose files include
/// `.parquet` files and which has no image file, or a `.parquet` file with the
/// `huggingface` schema metadata or a struct column holding `bytes`.
pub(crate) fn looks_like_hf(arg: &Path) -> bool {
    if arg.is_file() {
        return is_parquet(arg)
            && std::fs::File::open(arg)
                .ok()
                .and_then(|mut f| pq::read_metadata(&mut f).ok())
                .is_some_and(|m| {
                    hf_metadata(&m).is_some()
                        || pq::infer_schema(&m)
                            .is_ok_and(|s| s.iter_values().any(|f| image_field(f).is_some()))
                });
    }
    if arg.is_dir() {
        let mut any = false;
        for e in walkdir::WalkDir::new(arg)
            .into_iter()
            .filter_map(|e| e.ok())
        {
            if e.file_type().is_file() {
                if crate::walk::is_image_name(e.file_name()) {
                    return false;
                }
                any |= is_parquet(e.path());
            }
        }
        return any;
    }
    !arg.exists() && arg.to_string_lossy().contains(['*', '?', '['])
}

/// The `huggingface` schema metadata, parsed.
fn hf_metadata(m: &FileMetadata) -> Option<serde_json::Value> {
    m.key_value_metadata
        .as_ref()?
        .iter()
        .find(|kv| kv.key == "huggingface")
        .and_then(|kv| kv.value.as_deref())
        .and_then(|v| serde_json::from_str(v).ok())
}

/// The `features` object of the metadata (`info.features`, or `features` at the top).
fn features(meta: &serde_json::Value) -> Option<&serde_json::Map<String, serde_json::Value>> {
    meta.pointer("/info/features")
        .or_else(|| meta.get("features"))
        .and_then(|f| f.as_object())
}

/// Indices of a struct field's `bytes` and `path` children, when it is an image struct.
fn image_field(f: &ArrowField) -> Option<(usize, Option<usize>)> {
    let ArrowDataType::Struct(children) = f.dtype().to_storage() else {
        return None;
    };
    let bytes = children.iter().position(|c| {
        c.name.as_str() == "bytes"
            && matches!(
                c.dtype().to_storage(),
                ArrowDataType::Binary | ArrowDataType::LargeBinary | ArrowDataType::BinaryView
            )
    })?;
    let path = children.iter().position(|c| c.name.as_str() == "path");
    Some((bytes, path))
}

/// An opened file: its footer, Arrow schema, and where the image column is.
struct Opened {
    file: std::fs::File,
    meta: FileMetadata,
    schema: ArrowSchema,
    /// Index in the schema of the image column, and its children's indices.
    image: (usize, usize, Option<usize>),
}

fn open(path: &Path) -> Result<Opened> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = pq::read_metadata(&mut file)
        .map_err(|e| bad(path, format!("not a readable Parquet file: {e}")))?;
    let schema = pq::infer_schema(&meta)
        .map_err(|e| bad(path, format!("cannot read the Parquet schema: {e}")))?;
    // The column the metadata calls an Image, else one named `image`, else the only
    // struct column holding `bytes`.
    let hf = hf_metadata(&meta);
    let declared = hf.as_ref().and_then(features).and_then(|f| {
        f.iter()
            .find(|(_, v)| v.get("_type").and_then(|t| t.as_str()) == Some("Image"))
            .map(|(k, _)| k.clone())
    });
    let fields: Vec<&ArrowField> = schema.iter_values().collect();
    let pick = |name: &str| {
        fields
            .iter()
            .position(|f| f.name.as_str() == name)
            .and_then(|i| image_field(fields[i]).map(|(b, p)| (i, b, p)))
    };
    let image = declared
        .as_deref()
        .and_then(pick)
        .or_else(|| pick("image"))
        .or_else(|| {
            let all: Vec<_> = (0..fields.len())
                .filter_map(|i| image_field(fields[i]).map(|(b, p)| (i, b, p)))
                .collect();
            (all.len() == 1).then(|| all[0])
        })
        .ok_or_else(|| {
            bad(
                path,
                format!(
                    "no image column (a struct<bytes: binary, path: string>, as `datasets` writes an Image feature); its columns: {}",
                    describe_columns(&schema)
                ),
            )
        })?;
    Ok(Opened {
        file,
        meta,
        schema,
        image,
    })
}

fn describe_columns(schema: &ArrowSchema) -> String {
    schema
        .iter_values()
        .map(|f| format!("{} ({:?})", f.name, f.dtype()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Deserialize one top-level column of one row group (every leaf under it).
fn read_column(o: &mut Opened, path: &Path, group: usize, index: usize) -> Result<Box<dyn Array>> {
    let field = o
        .schema
        .get_at_index(index)
        .expect("index from the schema")
        .1
        .clone();
    let rg = &o.meta.row_groups[group];
    let chunks: Vec<_> = rg
        .columns_under_root_iter(&field.name)
        .ok_or_else(|| {
            bad(
                path,
                format!("row group {group} has no column {}", field.name),
            )
        })?
        .collect();
    let mut decompressors = Vec::with_capacity(chunks.len());
    let mut types = Vec::with_capacity(chunks.len());
    for c in chunks {
        let r = c.byte_range();
        let len = (r.end - r.start) as usize;
        let mut buf = Vec::new();
        buf.try_reserve_exact(len).map_err(|_| {
            bad(
                path,
                format!(
                    "cannot allocate {len} bytes for row group {group} of column {}",
                    field.name
                ),
            )
        })?;
        buf.resize(len, 0);
        o.file
            .seek(SeekFrom::Start(r.start))
            .and_then(|_| o.file.read_exact(&mut buf))
            .map_err(|e| bad(path, format!("cannot read row group {group}: {e}")))?;
        let pages = PageReader::new(
            std::io::Cursor::new(polars_buffer::Buffer::from(buf)),
            c,
            vec![],
            usize::MAX,
        );
        decompressors.push(BasicDecompressor::new(pages, vec![]));
        types.push(&c.descriptor().descriptor.primitive_type);
    }
    let (arrays, _) = pq::column_iter_to_arrays(decompressors, types, field.clone(), None)
        .map_err(|e| {
            bad(
                path,
                format!(
                    "cannot decode row group {group} of column {}: {e}",
                    field.name
                ),
            )
        })?;
    match arrays.len() {
        1 => Ok(arrays.into_iter().next().expect("one")),
        _ => {
            let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
            polars_arrow::compute::concatenate::concatenate(&refs)
                .map_err(|e| bad(path, format!("row group {group} of {}: {e}", field.name)))
        }
    }
}

/// A row's image bytes in an image struct array (None: a null image or null bytes).
fn image_bytes(arr: &dyn Array, bytes_child: usize, row: usize) -> Option<&[u8]> {
    let s = arr.as_any().downcast_ref::<StructArray>()?;
    if s.is_null(row) {
        return None;
    }
    let b = s.values().get(bytes_child)?;
    if b.is_null(row) {
        return None;
    }
    let any = b.as_any();
    if let Some(a) = any.downcast_ref::<BinaryViewArray>() {
        Some(a.value(row))
    } else if let Some(a) = any.downcast_ref::<BinaryArray<i64>>() {
        Some(a.value(row))
    } else {
        any.downcast_ref::<BinaryArray<i32>>().map(|a| a.value(row))
    }
}

/// A row's image path in an image struct array.
fn image_path(arr: &dyn Array, path_child: Option<usize>, row: usize) -> Option<String> {
    let s = arr.as_any().downcast_ref::<StructArray>()?;
    let p = s.values().get(path_child?)?;
    if s.is_null(row) || p.is_null(row) {
        return None;
    }
    let any = p.as_any();
    if let Some(a) = any.downcast_ref::<polars_arrow::array::Utf8ViewArray>() {
        Some(a.value(row).to_string())
    } else if let Some(a) = any.downcast_ref::<polars_arrow::array::Utf8Array<i64>>() {
        Some(a.value(row).to_string())
    } else {
        any.downcast_ref::<polars_arrow::array::Utf8Array<i32>>()
            .map(|a| a.value(row).to_string())
    }
}

/// A polars column from one deserialized Arrow array (None when polars, built without
/// nested types, cannot hold it).
fn to_column(field: &ArrowField, arr: Box<dyn Array>) -> Option<Column> {
    Series::try_from((field, arr)).ok().map(Column::from)
}

/// List the rows of every file as entries (sorted by `FILE#row=NNN`, i.e. file then row).
pub(crate) fn read(arg: &Path, label_column: &str) -> Result<Dataset> {
    let mut ds = Dataset {
        source: "hf-parquet",
        ..Default::default()
    };
    // Per file: its recorded name, the row number width, each row group's first row.
    let mut layout: Vec<(String, usize, Vec<usize>)> = vec![];
    for (path, name) in files(arg)? {
        // A malformed file must not take the run down with a panic inside the reader.
        let listed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            list_file(&path, label_column, &mut ds)
        }));
        match listed {
            Ok(r) => {
                let (rows, groups) = r?;
                layout.push((name, rows.saturating_sub(1).to_string().len(), groups));
            }
            Err(_) => {
                return Err(bad(
                    &path,
                    "the Parquet reader failed on this file (internal panic caught)",
                ))
            }
        }
    }
    if ds.entries.is_empty() {
        return Err(bad(arg, "holds no row"));
    }
    // The images' own paths name the rows when they all have one and, in the files'
    // order, they are strictly increasing (so distinct, and the run's rows stay sorted
    // by path, as every run's are).
    let own = ds.entries.iter().all(|e| !e.rel.is_empty())
        && ds
            .entries
            .windows(2)
            .all(|w| w[0].rel.as_bytes() < w[1].rel.as_bytes());
    if !own {
        let mut file = 0;
        for i in 0..ds.entries.len() {
            if i > 0 && !std::sync::Arc::ptr_eq(&ds.entries[i].path, &ds.entries[i - 1].path) {
                file += 1;
            }
            let (name, width, groups) = &layout[file];
            let Some(Member::ParquetRow { group, row, .. }) = ds.entries[i].member else {
                unreachable!("every entry is a Parquet row")
            };
            ds.entries[i].rel = format!(
                "{name}#row={:0width$}",
                groups[group as usize] + row as usize
            );
        }
    }
    ds.entries.shrink_to_fit();
    ds.normalize_extras();
    ds.collect_classes();
    Ok(ds)
}

/// List one file's rows into `ds` (`rel` is the image's own path, or empty); returns
/// its row count and the first row of each row group.
fn list_file(path: &Path, label_column: &str, ds: &mut Dataset) -> Result<(usize, Vec<usize>)> {
    let mut o = open(path)?;
    let hf = hf_metadata(&o.meta);
    let label_index = o
        .schema
        .iter_values()
        .position(|f| f.name.as_str() == label_column)
        .ok_or_else(|| {
            bad(
                path,
                format!(
                    "no label column '{label_column}' (columns: {}); name it with the label_column option",
                    describe_columns(&o.schema)
                ),
            )
        })?;
    let names: Option<Vec<String>> = hf
        .as_ref()
        .and_then(features)
        .and_then(|f| f.get(label_column))
        .filter(|l| l.get("_type").and_then(|t| t.as_str()) == Some("ClassLabel"))
        .and_then(|l| l.get("names"))
        .and_then(|n| serde_json::from_value(n.clone()).ok());
    let (image_index, bytes_child, path_child) = o.image;
    let carried: Vec<usize> = (0..o.schema.len())
        .filter(|&i| i != image_index && i != label_index)
        .collect();
    let shared: std::sync::Arc<Path> = path.into();
    let mut starts = Vec::with_capacity(o.meta.row_groups.len());
    let mut row = 0usize;
    let mut skipped_columns: Vec<String> = vec![];
    for group in 0..o.meta.row_groups.len() {
        let n = o.meta.row_groups[group].num_rows();
        starts.push(row);
        let images = read_column(&mut o, path, group, image_index)?;
        let label_field = o.schema.get_at_index(label_index).expect("index").1.clone();
        let labels = read_column(&mut o, path, group, label_index)?;
        let labels = to_column(&label_field, labels)
            .and_then(|c| c.cast(&polars::prelude::DataType::String).ok())
            .ok_or_else(|| {
                bad(
                    path,
                    format!(
                        "label column '{label_column}' has type {:?}, not a class id or name",
                        label_field.dtype()
                    ),
                )
            })?;
        let labels = labels
            .str()
            .map_err(|e| bad(path, e))?
            .iter()
            .map(|v| v.map(str::to_string))
            .collect::<Vec<_>>();
        let mut columns: Vec<(std::sync::Arc<str>, Vec<Extra>)> = vec![];
        for &i in &carried {
            let field = o.schema.get_at_index(i).expect("index").1.clone();
            let arr = read_column(&mut o, path, group, i)?;
            let values = to_column(&field, arr).and_then(|c| crate::manifest::extras_of(&c).ok());
            match values {
                Some(v) => columns.push((ds.strings.get(&field.name), v)),
                None => {
                    if !skipped_columns.contains(&field.name.to_string()) {
                        skipped_columns.push(field.name.to_string());
                    }
                }
            }
        }
        for r in 0..n {
            let bytes = image_bytes(images.as_ref(), bytes_child, r);
            let own_path = image_path(images.as_ref(), path_child, r);
            let (class, label_problem) = match labels.get(r).cloned().flatten() {
                None => (String::new(), Some("the row's label is null".to_string())),
                Some(l) => match (&names, l.parse::<i64>()) {
                    (_, Ok(-1)) => (String::new(), Some("the row has no label (-1)".to_string())),
                    (Some(names), Ok(id)) => {
                        match usize::try_from(id).ok().and_then(|i| names.get(i)) {
                            Some(n) => (n.clone(), None),
                            None => (
                                String::new(),
                                Some(format!(
                                    "label {id} is not a class of the file's ClassLabel ({} names)",
                                    names.len()
                                )),
                            ),
                        }
                    }
                    _ => (l, None),
                },
            };
            let problem = match bytes {
                None => Some("the row's image bytes are null".to_string()),
                Some(_) => label_problem,
            };
            let ext = own_path
                .as_deref()
                .and_then(|p| Path::new(p).extension())
                .map_or(u8::MAX, |e| {
                    crate::walk::image_extension(&e.to_string_lossy())
                });
            let extra = columns
                .iter()
                .map(|(c, v)| (c.clone(), v[r].clone()))
                .collect();
            ds.entries.push(Entry {
                rel: own_path
                    .map(|p| crate::walk::path_to_string(Path::new(&p)))
                    .unwrap_or_default(),
                path: shared.clone(),
                class: ds.strings.get(&class),
                size: bytes.map_or(0, |b| b.len() as u64),
                problem,
                extra,
                member: Some(Member::ParquetRow {
                    group: group as u32,
                    row: r as u32,
                    ext,
                }),
            });
        }
        row += n;
    }
    for c in skipped_columns {
        ds.warnings.push(format!(
            "{}: column '{c}' has a nested type and is not carried into the predictions",
            path.display()
        ));
    }
    Ok((row, starts))
}

/// The image column of the row group last asked for, kept by the thread that decodes
/// batches: consecutive rows of a shard come from the same row group, so each group is
/// read once per pass and memory stays at one group.
#[derive(Default)]
pub(crate) struct RowGroupCache {
    file: Option<(PathBuf, Opened)>,
    group: Option<(usize, Loaded)>,
}

/// A row group's image column, or why it could not be read (every row's error).
type Loaded = std::result::Result<Box<dyn Array>, String>;

impl RowGroupCache {
    /// The bytes of row `row` of row group `group` of `path`'s image column (at most
    /// `max` bytes, else an error).
    pub(crate) fn image(
        &mut self,
        path: &Path,
        group: usize,
        row: usize,
        max: u64,
    ) -> std::result::Result<Vec<u8>, String> {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.image_inner(path, group, row, max)
        }));
        r.unwrap_or_else(|_| {
            Err("the Parquet reader failed on this row group (internal panic caught)".into())
        })
    }

    fn image_inner(
        &mut self,
        path: &Path,
        group: usize,
        row: usize,
        max: u64,
    ) -> std::result::Result<Vec<u8>, String> {
        if self.file.as_ref().is_none_or(|(p, _)| p != path) {
            self.group = None;
            self.file = Some((path.to_path_buf(), open(path).map_err(|e| e.to_string())?));
        }
        let (_, o) = self.file.as_mut().expect("opened");
        if self.group.as_ref().is_none_or(|(g, _)| *g != group) {
            if group >= o.meta.row_groups.len() {
                return Err(format!(
                    "the file has no row group {group} (it changed since it was listed?)"
                ));
            }
            self.group = None;
            let image_index = o.image.0;
            let arr = read_column(o, path, group, image_index).map_err(|e| e.to_string());
            self.group = Some((group, arr));
        }
        let bytes_child = o.image.1;
        let (_, arr) = self.group.as_ref().expect("loaded");
        let arr = arr.as_ref().map_err(Clone::clone)?;
        if row >= arr.len() {
            return Err(format!(
                "row group {group} has no row {row} (the file changed since it was listed?)"
            ));
        }
        let b =
            image_bytes(arr.as_ref(), bytes_child, row).ok_or("the row's image bytes are null")?;
        if b.len() as u64 > max {
            return Err(format!(
                "image is {} bytes, above the limit of {max} bytes (--max-file-bytes); not read",
                b.len()
            ));
        }
        let mut v = Vec::new();
        v.try_reserve_exact(b.len())
            .map_err(|_| format!("cannot allocate {} bytes for the image", b.len()))?;
        v.extend_from_slice(b);
        Ok(v)
    }
}
