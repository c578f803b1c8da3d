//! Stage 2 of vit-batch: decode an image file and turn it into the model's input tensor.
//!
//! A crate of its own so that it can be fuzzed (`fuzz/`) and built without the rest of
//! the pipeline; `vit_batch::preprocess` re-exports it.
//!
//! This must reproduce what a user's Hugging Face pipeline feeds the model, or the
//! accuracy we report is not the model's. [`PreprocessConfig`] mirrors
//! `preprocessor_config.json` (ViTImageProcessor, DeiT-style crop configs); the steps
//! follow transformers' order on a uint8 RGB image: EXIF transpose + `convert("RGB")`
//! (as `transformers.image_utils.load_image`), resize with Pillow's antialiased
//! convolution filters, optional centre crop, rescale, normalize, CHW f32.
//! Fidelity against Pillow + transformers is checked by tests on committed reference
//! tensors (`fixtures/preprocess/`).

use std::cell::RefCell;
use std::io::Cursor;
use std::path::Path;

use fast_image_resize as fir;
use image::{DynamicImage, ImageDecoder, ImageReader};
use serde::{Deserialize, Serialize};

/// Errors in a preprocessing configuration (per-image problems are plain messages,
/// because they become error rows, not failures).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration: {what}")]
    Config { what: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Pillow's resample codes as used by transformers.
pub const PIL_NEAREST: u32 = 0;
pub const PIL_BILINEAR: u32 = 2;
pub const PIL_BICUBIC: u32 = 3;

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Pixel limit against decompression bombs (Pillow's MAX_IMAGE_PIXELS * 2, the size at
/// which Pillow itself refuses an image).
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;

/// Largest image file read, in bytes (checked from the file's metadata before
/// reading: a larger file becomes an error row, it is not read).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 30;

/// `size` / `crop_size` of a preprocessor config: `{height, width}` or `{shortest_edge}`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum SizeSpec {
    Exact { height: u32, width: u32 },
    ShortestEdge { shortest_edge: u32 },
}

fn t() -> bool {
    true
}
fn f() -> bool {
    false
}
fn bilinear() -> u32 {
    PIL_BILINEAR
}
fn rescale() -> f64 {
    1.0 / 255.0
}
fn half() -> Vec<f32> {
    vec![0.5; 3]
}

/// `preprocessor_config.json` (fields as transformers writes them).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PreprocessConfig {
    #[serde(default = "t")]
    pub do_resize: bool,
    pub size: SizeSpec,
    #[serde(default = "bilinear")]
    pub resample: u32,
    #[serde(default = "f")]
    pub do_center_crop: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop_size: Option<SizeSpec>,
    #[serde(default = "t")]
    pub do_rescale: bool,
    #[serde(default = "rescale")]
    pub rescale_factor: f64,
    #[serde(default = "t")]
    pub do_normalize: bool,
    #[serde(default = "half")]
    pub image_mean: Vec<f32>,
    #[serde(default = "half")]
    pub image_std: Vec<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_processor_type: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl PreprocessConfig {
    /// ViTImageProcessor defaults for a square input of `side` pixels (mean/std 0.5).
    pub fn vit_default(side: u32) -> Self {
        PreprocessConfig {
            do_resize: true,
            size: SizeSpec::Exact {
                height: side,
                width: side,
            },
            resample: PIL_BILINEAR,
            do_center_crop: false,
            crop_size: None,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: half(),
            image_std: half(),
            image_processor_type: Some("ViTImageProcessor".into()),
            extra: Default::default(),
        }
    }

    /// What we use for a bare `.onnx` with no config: the model's input size and the
    /// ImageNet mean/std (recorded as such in the run's metadata).
    pub fn imagenet_default(height: u32, width: u32) -> Self {
        let mut c = Self::vit_default(height);
        c.size = SizeSpec::Exact { height, width };
        c.image_mean = IMAGENET_MEAN.to_vec();
        c.image_std = IMAGENET_STD.to_vec();
        c.image_processor_type = None;
        c
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|e| match e {
            Error::Config { what } => Error::Config {
                what: format!("{}: {what}", path.display()),
            },
            e => e,
        })
    }

    /// Parse and [`validate`](Self::validate) the text of a `preprocessor_config.json`
    /// (the fuzz target `preprocessor_config` feeds it arbitrary text).
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| Error::Config {
            what: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Config { what });
        // Sizes are checked before anything is sized by them: a 0 would make empty
        // tensors (or a division by zero), the same for every image.
        for (field, spec) in [("size", Some(self.size)), ("crop_size", self.crop_size)] {
            match spec {
                Some(SizeSpec::Exact { height, width }) if height == 0 || width == 0 => {
                    return bad(format!(
                        "{field} must be at least 1x1 pixels, got height {height} x width {width}"
                    ));
                }
                Some(SizeSpec::ShortestEdge { shortest_edge: 0 }) => {
                    return bad(format!("{field}.shortest_edge must be at least 1, got 0"));
                }
                _ => {}
            }
        }
        if self.image_mean.len() != 3 || self.image_std.len() != 3 {
            return bad("image_mean and image_std must have 3 values (RGB)".into());
        }
        if self.image_std.contains(&0.0) {
            return bad("image_std must not contain 0".into());
        }
        // Every pixel value must normalize to a finite number (a tiny image_std or a
        // huge rescale_factor would make infinities, the same for every image).
        for ch in 0..3 {
            for v in [0.0, 255.0] {
                let mut x = if self.do_rescale {
                    (v * self.rescale_factor) as f32
                } else {
                    v as f32
                };
                if self.do_normalize {
                    x = (x - self.image_mean[ch]) / self.image_std[ch];
                }
                if !x.is_finite() {
                    return bad(format!(
                        "image_mean / image_std / rescale_factor turn pixel value {v} of channel {ch} into {x}"
                    ));
                }
            }
        }
        if !matches!(
            self.resample,
            PIL_NEAREST | PIL_BILINEAR | PIL_BICUBIC | 1 | 4 | 5
        ) {
            return bad(format!("unsupported resample {}", self.resample));
        }
        if self.do_center_crop && self.crop_size.is_none() {
            return bad("do_center_crop is true but crop_size is missing".into());
        }
        if !self.do_resize && !self.do_center_crop {
            return bad(
                "with do_resize and do_center_crop both false the input size is unknown".into(),
            );
        }
        Ok(())
    }

    /// Height and width of the tensor this config produces.
    pub fn output_size(&self) -> Result<(u32, u32)> {
        let spec = if self.do_center_crop {
            self.crop_size
        } else {
            Some(self.size)
        };
        match spec {
            Some(SizeSpec::Exact { height, width }) => Ok((height, width)),
            _ => Err(Error::Config {
                what: "the final size must be {height, width} (a shortest_edge resize needs a crop_size)"
                    .into(),
            }),
        }
    }

    fn filter(&self) -> fir::ResizeAlg {
        use fir::{FilterType, ResizeAlg};
        match self.resample {
            PIL_NEAREST => ResizeAlg::Nearest,
            PIL_BICUBIC => ResizeAlg::Convolution(FilterType::CatmullRom),
            1 => ResizeAlg::Convolution(FilterType::Lanczos3),
            4 => ResizeAlg::Convolution(FilterType::Box),
            5 => ResizeAlg::Convolution(FilterType::Hamming),
            _ => ResizeAlg::Convolution(FilterType::Bilinear),
        }
    }
}

/// Target size of a resize step, as transformers computes it.
fn resize_target(spec: SizeSpec, h: u32, w: u32) -> (u32, u32) {
    match spec {
        SizeSpec::Exact { height, width } => (height, width),
        SizeSpec::ShortestEdge { shortest_edge: s } => {
            // transformers' get_resize_output_image_size(default_to_square=False):
            // the short side becomes s, the long side int(s * long / short).
            let (short, long) = if h <= w { (h, w) } else { (w, h) };
            let other = ((s as u64 * long as u64) / short.max(1) as u64) as u32;
            if h <= w {
                (s, other)
            } else {
                (other, s)
            }
        }
    }
}

/// A decoded image as 8-bit RGB, with what decoding noticed.
pub struct Decoded {
    pub rgb: image::RgbImage,
    /// The format found in the content, if it differs from the file's extension.
    pub format_mismatch: Option<String>,
    /// Which decoder made the pixels ([`JPEG_DECODER`] for JPEGs it accepts).
    pub decoder: &'static str,
    /// A JPEG libjpeg-turbo refused (corrupt data it would only warn about, an
    /// unusual colour space) that `image` decoded instead: said in the row's warning.
    pub fallback: Option<String>,
}

impl Decoded {
    /// What the row's `warning` column says about decoding, if anything.
    pub fn warning(&self) -> Option<String> {
        match (&self.format_mismatch, &self.fallback) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.clone().or_else(|| b.clone()),
        }
    }
}

/// The JPEG decoder: libjpeg-turbo (the library Pillow bundles), through TurboJPEG.
pub const JPEG_DECODER: &str = "libjpeg-turbo";

thread_local! {
    static TURBO: RefCell<Option<turbojpeg::Decompressor>> = const { RefCell::new(None) };
}

/// Decode a JPEG as Pillow does (libjpeg-turbo, accurate integer DCT, fancy
/// upsampling; gray replicated; CMYK converted by Pillow's formula), `w x h` pixels.
fn decode_jpeg_turbo(bytes: &[u8], w: u32, h: u32) -> Result<image::RgbImage, String> {
    TURBO.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(turbojpeg::Decompressor::new().map_err(|e| e.to_string())?);
        }
        let d = slot.as_mut().expect("set above");
        let header = d.read_header(bytes).map_err(|e| e.to_string())?;
        if (header.width, header.height) != (w as usize, h as usize) {
            return Err(format!(
                "header says {}x{}, the container {w}x{h}",
                header.width, header.height
            ));
        }
        let (w, h) = (header.width, header.height);
        let cmyk = matches!(
            header.colorspace,
            turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK
        );
        let format = if cmyk {
            turbojpeg::PixelFormat::CMYK
        } else {
            turbojpeg::PixelFormat::RGB
        };
        let px = format.size();
        let mut pixels = Vec::new();
        pixels
            .try_reserve_exact(w * h * px)
            .map_err(|_| format!("cannot allocate {} bytes", w * h * px))?;
        pixels.resize(w * h * px, 0);
        let image = turbojpeg::Image {
            pixels: &mut pixels[..],
            width: w,
            pitch: w * px,
            height: h,
            format,
        };
        d.decompress(bytes, image).map_err(|e| e.to_string())?;
        if cmyk {
            pixels = cmyk_to_rgb_like_pillow(&pixels, has_adobe_marker(bytes));
        }
        image::RgbImage::from_raw(w as u32, h as u32, pixels)
            .ok_or_else(|| "decoded buffer has the wrong size".to_string())
    })
}

/// An APP14 "Adobe" segment: Pillow then reads CMYK as inverted ("CMYK;I").
fn has_adobe_marker(bytes: &[u8]) -> bool {
    bytes
        .windows(9)
        .any(|w| w[0] == 0xFF && w[1] == 0xEE && &w[4..9] == b"Adobe")
}

/// Pillow's `convert("RGB")` of a CMYK image (`cmyk2rgb` in its Convert.c), after its
/// JPEG reader's inversion of Adobe files.
fn cmyk_to_rgb_like_pillow(cmyk: &[u8], inverted: bool) -> Vec<u8> {
    let muldiv255 = |a: u32, b: u32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let mut out = Vec::with_capacity(cmyk.len() / 4 * 3);
    for p in cmyk.chunks_exact(4) {
        let v = |i: usize| {
            if inverted {
                255 - p[i] as u32
            } else {
                p[i] as u32
            }
        };
        let nk = 255 - v(3);
        for i in 0..3 {
            out.push(nk.saturating_sub(muldiv255(v(i), nk)).min(255) as u8);
        }
    }
    out
}

/// Decode `bytes` by content (not by extension), refusing images above `max_pixels`
/// before any large allocation, applying EXIF orientation, converting to RGB.
pub fn decode(bytes: &[u8], ext: Option<&str>, max_pixels: u64) -> Result<Decoded, String> {
    decode_impl(bytes, ext, max_pixels, true)
}

/// [`decode`] with JPEGs decoded by zune-jpeg (`image`'s decoder, vit-batch's before
/// libjpeg-turbo) instead: for comparisons (the benches, the fidelity tests).
pub fn decode_with_zune_jpeg(
    bytes: &[u8],
    ext: Option<&str>,
    max_pixels: u64,
) -> Result<Decoded, String> {
    decode_impl(bytes, ext, max_pixels, false)
}

fn decode_impl(
    bytes: &[u8],
    ext: Option<&str>,
    max_pixels: u64,
    turbo: bool,
) -> Result<Decoded, String> {
    if bytes.is_empty() {
        return Err("empty file (0 bytes)".into());
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    let Some(format) = reader.format() else {
        return Err("not a recognised image format (unknown content)".into());
    };
    let format_mismatch = ext.and_then(|ext| {
        let by_ext = image::ImageFormat::from_extension(ext)?;
        (by_ext != format).then(|| {
            format!(
                "content is {} but the extension says {}",
                format_name(format),
                format_name(by_ext)
            )
        })
    });
    if format == image::ImageFormat::Jpeg && jpeg_is_truncated(bytes) {
        // zune-jpeg fills missing scans with grey and reports success; Pillow refuses
        // ("image file is truncated"). A silent half-grey image is worse than an error.
        return Err(
            "JPEG decode error: truncated file (no end-of-image marker after the last scan)".into(),
        );
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 26));
    let mut reader = reader;
    reader.limits(limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| format!("{} decode error: {e}", format_name(format)))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(format!("image has no pixels ({w}x{h})"));
    }
    if (w as u64) * (h as u64) > max_pixels {
        return Err(format!(
            "image is {w}x{h} = {} pixels, above the limit of {max_pixels} (--max-pixels); refused as a possible decompression bomb",
            w as u64 * h as u64
        ));
    }
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut fallback = None;
    if turbo && format == image::ImageFormat::Jpeg {
        match decode_jpeg_turbo(bytes, w, h) {
            Ok(rgb) => {
                let mut img = DynamicImage::ImageRgb8(rgb);
                img.apply_orientation(orientation);
                return Ok(Decoded {
                    rgb: to_rgb_like_pillow(img),
                    format_mismatch,
                    decoder: JPEG_DECODER,
                    fallback: None,
                });
            }
            Err(e) => {
                fallback = Some(format!(
                    "libjpeg-turbo refused this JPEG ({e}); decoded with zune-jpeg instead, whose pixels can differ from Pillow's by a few levels"
                ));
            }
        }
    }
    let mut img = DynamicImage::from_decoder(decoder)
        .map_err(|e| format!("{} decode error: {e}", format_name(format)))?;
    img.apply_orientation(orientation);
    Ok(Decoded {
        rgb: to_rgb_like_pillow(img),
        format_mismatch,
        decoder: if format == image::ImageFormat::Jpeg {
            "zune-jpeg"
        } else {
            "image"
        },
        fallback,
    })
}

/// True when no EOI marker (FF D9) follows the last start-of-scan (FF DA). Inside
/// entropy-coded data 0xFF is always stuffed, so FF D9 there can only be a marker.
fn jpeg_is_truncated(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    let last_eoi = bytes.windows(2).rposition(|w| w == [0xFF, 0xD9]);
    match (last_sos, last_eoi) {
        (Some(s), Some(e)) => e < s,
        (Some(_), None) => true,
        _ => false,
    }
}

fn format_name(f: image::ImageFormat) -> String {
    f.extensions_str()
        .first()
        .map(|s| s.to_uppercase())
        .unwrap_or_else(|| format!("{f:?}"))
}

/// Pillow's `convert("RGB")` after Pillow's own decoding: gray is replicated, alpha
/// is dropped (not composited onto white), 16-bit RGB keeps the high byte (Pillow
/// reads such PNGs as 8-bit "RGB"), and 16-bit gray ("I;16") is *clipped* at 255,
/// not scaled — a Pillow quirk that transformers users get, reproduced on purpose.
fn to_rgb_like_pillow(img: DynamicImage) -> image::RgbImage {
    let gray16 = |w: u32, h: u32, px: &mut dyn Iterator<Item = u16>| {
        let buf: Vec<u8> = px.flat_map(|v| [v.min(255) as u8; 3]).collect();
        image::RgbImage::from_raw(w, h, buf).expect("sized")
    };
    match img {
        DynamicImage::ImageRgb8(i) => i,
        DynamicImage::ImageLuma16(i) => {
            gray16(i.width(), i.height(), &mut i.pixels().map(|p| p.0[0]))
        }
        DynamicImage::ImageLumaA16(i) => {
            gray16(i.width(), i.height(), &mut i.pixels().map(|p| p.0[0]))
        }
        DynamicImage::ImageRgb16(i) => {
            let buf = i.as_raw().iter().map(|v| (v >> 8) as u8).collect();
            image::RgbImage::from_raw(i.width(), i.height(), buf).expect("sized")
        }
        DynamicImage::ImageRgba16(i) => {
            let buf = i
                .pixels()
                .flat_map(|p| [p.0[0], p.0[1], p.0[2]])
                .map(|v| (v >> 8) as u8)
                .collect();
            image::RgbImage::from_raw(i.width(), i.height(), buf).expect("sized")
        }
        other => other.to_rgb8(),
    }
}

thread_local! {
    static RESIZER: RefCell<fir::Resizer> = RefCell::new(fir::Resizer::new());
}

/// Turns decoded images into normalized CHW f32 tensors for one config.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    pub config: PreprocessConfig,
    pub height: u32,
    pub width: u32,
    pub max_pixels: u64,
    /// Largest file read; larger files are refused from their metadata, unread.
    pub max_file_bytes: u64,
}

impl Preprocessor {
    pub fn new(config: PreprocessConfig) -> Result<Self> {
        config.validate()?;
        let (height, width) = config.output_size()?;
        Ok(Preprocessor {
            config,
            height,
            width,
            max_pixels: DEFAULT_MAX_PIXELS,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        })
    }

    /// Values per image (3 * H * W).
    pub fn tensor_len(&self) -> usize {
        3 * self.height as usize * self.width as usize
    }

    /// Resize + crop in uint8, as transformers does on a PIL image.
    pub fn geometry(&self, rgb: &image::RgbImage) -> Result<image::RgbImage, String> {
        let c = &self.config;
        let mut resized = None;
        if c.do_resize {
            let (th, tw) = resize_target(c.size, rgb.height(), rgb.width());
            if (th, tw) != (rgb.height(), rgb.width()) {
                resized = Some(resize(rgb, tw, th, c.filter())?);
            }
        }
        if c.do_center_crop {
            if let Some(SizeSpec::Exact { height, width }) = c.crop_size {
                return Ok(center_crop(resized.as_ref().unwrap_or(rgb), height, width));
            }
        }
        Ok(resized.unwrap_or_else(|| rgb.clone()))
    }

    /// Rescale + normalize into `out` (CHW, len 3*H*W).
    pub fn to_tensor(&self, img: &image::RgbImage, out: &mut [f32]) {
        let c = &self.config;
        let plane = (img.width() * img.height()) as usize;
        // transformers rescales in float64 and casts to float32, then normalizes in
        // float32 with a true division; a 256-entry table per channel does both exactly.
        let mut lut = [[0f32; 256]; 3];
        for (ch, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                let mut x = if c.do_rescale {
                    (v as f64 * c.rescale_factor) as f32
                } else {
                    v as f32
                };
                if c.do_normalize {
                    x = (x - c.image_mean[ch]) / c.image_std[ch];
                }
                *out = x;
            }
        }
        for (i, px) in img.pixels().enumerate() {
            for ch in 0..3 {
                out[ch * plane + i] = lut[ch][px.0[ch] as usize];
            }
        }
    }

    /// Full path from file bytes to a tensor written into `out`.
    pub fn process_bytes(
        &self,
        bytes: &[u8],
        ext: Option<&str>,
        out: &mut [f32],
    ) -> Result<Option<String>, String> {
        let d = decode(bytes, ext, self.max_pixels)?;
        let img = self.geometry(&d.rgb)?;
        if (img.height(), img.width()) != (self.height, self.width) {
            return Err(format!(
                "preprocessing produced {}x{}, the model needs {}x{}",
                img.height(),
                img.width(),
                self.height,
                self.width
            ));
        }
        self.to_tensor(&img, out);
        Ok(d.warning())
    }

    /// Read and preprocess one file; the error is a message for the error row.
    pub fn process_file(&self, path: &Path, out: &mut [f32]) -> Result<Option<String>, String> {
        let bytes = read_bounded(path, self.max_file_bytes)?;
        let ext = path.extension().and_then(|e| e.to_str());
        self.process_bytes(&bytes, ext, out)
    }

    /// Convenience for training and tests: a fresh tensor.
    pub fn load(&self, path: &Path) -> Result<Vec<f32>, String> {
        let mut v = vec![0f32; self.tensor_len()];
        self.process_file(path, &mut v)?;
        Ok(v)
    }
}

fn too_large(what: &str, n: u64, max: u64) -> String {
    format!("{what} is {n} bytes, above the limit of {max} bytes (--max-file-bytes); not read")
}

/// An empty buffer with room for `len` bytes, or why not (over `max`, or out of memory).
fn bounded_buffer(what: &str, len: u64, max: u64) -> Result<Vec<u8>, String> {
    if len > max {
        return Err(too_large(what, len, max));
    }
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(len as usize)
        .map_err(|_| format!("cannot allocate {len} bytes to read the {what}"))?;
    Ok(bytes)
}

/// Read `len` bytes at `offset` of `path` (an image stored inside a container file),
/// unless `len` is above `max` bytes.
pub fn read_range_bounded(path: &Path, offset: u64, len: u64, max: u64) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::FileExt;
    let mut buf = bounded_buffer("member", len, max)?;
    buf.resize(len as usize, 0);
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read file: {e}"))?;
    f.read_exact_at(&mut buf, offset)
        .map_err(|e| format!("cannot read {len} bytes at offset {offset}: {e}"))?;
    Ok(buf)
}

/// Read `path` whole, unless its metadata says it is larger than `max` bytes (then it
/// is not read at all). The read itself is capped at `max + 1` bytes, so a file that
/// grows while being read cannot make it unbounded; the buffer is reserved
/// fallibly, so a failed allocation is this file's error, not an abort.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read file: {e}"))?;
    let len = f
        .metadata()
        .map_err(|e| format!("cannot read file: {e}"))?
        .len();
    let too_large = |n: u64| too_large("file", n, max);
    let mut bytes = bounded_buffer("file", len, max)?;
    f.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read file: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

fn resize(
    img: &image::RgbImage,
    w: u32,
    h: u32,
    alg: fir::ResizeAlg,
) -> Result<image::RgbImage, String> {
    // Borrowed: the decoded image is not copied.
    let src = fir::images::ImageRef::new(
        img.width(),
        img.height(),
        img.as_raw(),
        fir::PixelType::U8x3,
    )
    .map_err(|e| format!("resize: {e}"))?;
    let mut dst = fir::images::Image::new(w, h, fir::PixelType::U8x3);
    RESIZER.with(|r| {
        r.borrow_mut()
            .resize(&src, &mut dst, &fir::ResizeOptions::new().resize_alg(alg))
            .map_err(|e| format!("resize: {e}"))
    })?;
    image::RgbImage::from_raw(w, h, dst.into_vec()).ok_or_else(|| "resize: bad buffer".to_string())
}

/// transformers' `center_crop`: top = (h - ch) // 2, left = (w - cw) // 2; pads with
/// zeros when the image is smaller than the crop.
fn center_crop(img: &image::RgbImage, ch: u32, cw: u32) -> image::RgbImage {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let top = (h - ch as i64).div_euclid(2);
    let left = (w - cw as i64).div_euclid(2);
    image::RgbImage::from_fn(cw, ch, |x, y| {
        let (sx, sy) = (x as i64 + left, y as i64 + top);
        if sx >= 0 && sy >= 0 && sx < w && sy < h {
            *img.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

/// The fuzz harness (`fuzz/`), here so that the regression test replaying its finds
/// (`tests/fuzz_regressions.rs`) runs exactly the same checks.
#[doc(hidden)]
pub mod model_config;

pub mod fuzzing {
    use super::*;

    const EXTS: [&str; 8] = ["jpg", "png", "gif", "bmp", "webp", "tif", "jpeg", "txt"];

    /// The preprocessing config chosen by one selector byte: output side, resize
    /// filter, and exact size or shortest edge + centre crop.
    pub fn preprocessor(sel: u8) -> Preprocessor {
        let side = [1u32, 7, 16, 32][(sel & 3) as usize];
        let mut cfg = PreprocessConfig::vit_default(side);
        cfg.resample = [0, 1, 2, 3, 4, 5][((sel >> 2) % 6) as usize];
        if sel & 0x80 != 0 {
            cfg.size = SizeSpec::ShortestEdge {
                shortest_edge: side + 3,
            };
            cfg.do_center_crop = true;
            cfg.crop_size = Some(SizeSpec::Exact {
                height: side,
                width: side,
            });
        }
        let mut p = Preprocessor::new(cfg).expect("valid config");
        // Keeps the fuzzer inside its RSS limit; the refusal path is what is tested.
        p.max_pixels = 1 << 22;
        p
    }

    /// The text of a `preprocessor_config.json`, as the user's model folder holds it
    /// (fuzz target `preprocessor_config`). Invariants: no panic; an accepted config
    /// has an output of at least 1x1, and (when its sizes are small enough to try)
    /// turns a small image into a finite tensor of its own size.
    /// The `config.json` harness: any text either parses or is refused with a
    /// message; what parses is self-consistent.
    pub fn check_model_config(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if let Ok(c) = crate::model_config::parse_model_config(text) {
            if let Some(l) = &c.labels {
                let n = serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|v| {
                        v.get("id2label")
                            .and_then(|m| m.as_object())
                            .map(|m| m.len())
                    });
                assert_eq!(Some(l.len()), n, "one label per id2label entry");
            }
        }
    }

    pub fn check_config(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let Ok(cfg) = PreprocessConfig::from_json(text) else {
            return;
        };
        let Ok(p) = Preprocessor::new(cfg) else {
            return;
        };
        assert!(p.height >= 1 && p.width >= 1, "accepted an empty output");
        let side = |s: SizeSpec| match s {
            SizeSpec::Exact { height, width } => height.max(width),
            SizeSpec::ShortestEdge { shortest_edge } => shortest_edge,
        };
        let sides = [Some(p.config.size), p.config.crop_size];
        if sides.iter().flatten().any(|&s| side(s) > 256) {
            return;
        }
        let img = image::RgbImage::from_fn(5, 3, |x, y| {
            image::Rgb([(x * 50) as u8, (y * 100) as u8, 255])
        });
        let Ok(g) = p.geometry(&img) else {
            return;
        };
        if (g.height(), g.width()) != (p.height, p.width) {
            return;
        }
        let mut out = vec![f32::NAN; p.tensor_len()];
        p.to_tensor(&g, &mut out);
        assert!(out.iter().all(|v| v.is_finite()), "non-finite tensor");
    }

    /// Byte 0 picks the file extension, byte 1 the config, the rest is the file.
    /// Invariants: no panic, and a success is a finite tensor inside the normalized
    /// range (mean = std = 0.5, so [-1, 1]).
    pub fn check(data: &[u8]) {
        if data.len() < 2 {
            return;
        }
        let ext = EXTS[(data[0] % 8) as usize];
        let p = preprocessor(data[1]);
        let mut out = vec![f32::NAN; p.tensor_len()];
        if p.process_bytes(&data[2..], Some(ext), &mut out).is_ok() {
            assert!(
                out.iter()
                    .all(|v| v.is_finite() && (-1.0..=1.0).contains(v)),
                "tensor out of range"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(img: &DynamicImage) -> Vec<u8> {
        let mut v = Vec::new();
        img.write_to(&mut Cursor::new(&mut v), image::ImageFormat::Png)
            .unwrap();
        v
    }

    #[test]
    fn shortest_edge_follows_transformers() {
        let s = SizeSpec::ShortestEdge { shortest_edge: 256 };
        assert_eq!(resize_target(s, 375, 500), (256, 341));
        assert_eq!(resize_target(s, 500, 375), (341, 256));
    }

    #[test]
    fn tensor_layout_and_normalization() {
        let p = Preprocessor::new(PreprocessConfig::vit_default(2)).unwrap();
        let img = image::RgbImage::from_fn(2, 2, |x, y| {
            image::Rgb([255, (x * 255) as u8, (y * 255) as u8])
        });
        let mut out = vec![0.0; p.tensor_len()];
        p.process_bytes(&png(&DynamicImage::ImageRgb8(img)), Some("png"), &mut out)
            .unwrap();
        // R plane all 1.0, G plane follows x, B plane follows y.
        assert_eq!(&out[0..4], &[1.0, 1.0, 1.0, 1.0]);
        assert_eq!(&out[4..8], &[-1.0, 1.0, -1.0, 1.0]);
        assert_eq!(&out[8..12], &[-1.0, -1.0, 1.0, 1.0]);
    }

    #[test]
    fn bad_bytes_are_messages_not_panics() {
        let p = Preprocessor::new(PreprocessConfig::vit_default(8)).unwrap();
        let mut out = vec![0.0; p.tensor_len()];
        assert!(p
            .process_bytes(b"", Some("png"), &mut out)
            .unwrap_err()
            .contains("empty"));
        assert!(p
            .process_bytes(b"hello world", Some("png"), &mut out)
            .is_err());
        let mut bytes = png(&DynamicImage::new_rgb8(16, 16));
        bytes.truncate(bytes.len() / 2);
        assert!(p.process_bytes(&bytes, Some("png"), &mut out).is_err());
    }

    #[test]
    fn pixel_limit_and_mismatch() {
        let mut p = Preprocessor::new(PreprocessConfig::vit_default(4)).unwrap();
        p.max_pixels = 100;
        let mut out = vec![0.0; p.tensor_len()];
        let big = png(&DynamicImage::new_luma8(20, 20));
        assert!(p
            .process_bytes(&big, Some("png"), &mut out)
            .unwrap_err()
            .contains("limit"));
        p.max_pixels = DEFAULT_MAX_PIXELS;
        let note = p.process_bytes(&big, Some("jpg"), &mut out).unwrap();
        assert!(note.unwrap().contains("content is PNG"));
    }

    proptest::proptest! {
        /// Arbitrary bytes (with or without a real image header) never panic: they
        /// decode or give a message.
        #[test]
        fn arbitrary_bytes_never_panic(
            head in proptest::sample::select(vec![&b"\x89PNG\r\n\x1a\n"[..], b"\xff\xd8\xff", b"GIF89a", b"BM", b"RIFF\0\0\0\0WEBP", b"II*\0", b""]),
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
        ) {
            let p = Preprocessor::new(PreprocessConfig::vit_default(8)).unwrap();
            let mut out = vec![0.0; p.tensor_len()];
            let bytes: Vec<u8> = head.iter().chain(&tail).copied().collect();
            let _ = p.process_bytes(&bytes, Some("png"), &mut out);
        }

        /// Any valid image, any size, gives a tensor of the model's size whose values
        /// stay in the normalized range [(0-mean)/std, (1-mean)/std].
        #[test]
        fn any_image_gives_a_bounded_tensor(w in 1u32..70, h in 1u32..70, seed in 0u64..1000, side in 1u32..40, bicubic in proptest::bool::ANY) {
            let mut cfg = PreprocessConfig::vit_default(side);
            if bicubic {
                cfg.resample = PIL_BICUBIC;
            }
            let p = Preprocessor::new(cfg).unwrap();
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                let v = (x as u64 * 31 + y as u64 * 17 + seed * 7) % 256;
                image::Rgb([v as u8, (255 - v) as u8, (v * 3 % 256) as u8])
            });
            let mut out = vec![f32::NAN; p.tensor_len()];
            p.process_bytes(&png(&DynamicImage::ImageRgb8(img)), Some("png"), &mut out).unwrap();
            proptest::prop_assert!(out.iter().all(|v| v.is_finite() && (-1.0..=1.0).contains(v)));
        }
    }

    #[test]
    fn center_crop_matches_transformers_offsets() {
        let img = image::RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let c = center_crop(&img, 2, 2);
        assert_eq!(c.get_pixel(0, 0).0, [1, 1, 0]);
    }
}
