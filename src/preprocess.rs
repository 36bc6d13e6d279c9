//! Image input for the vision models: decode a file, then the eval transform the models were
//! trained against (timm's / torchvision's on PIL images): resize the shorter side, center
//! crop, scale to [0, 1], normalize per channel, lay out as CHW f32.
//!
//! Upstream order and rounding are kept so outputs match Pillow up to resampling arithmetic:
//! convert to RGB (alpha dropped, as PIL's `convert('RGB')`) or to PIL's 'L' luma, then resize
//! on 8-bit pixels, then crop, then normalize.

use std::borrow::Cow;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, GrayImage, ImageFormat, ImageReader, Limits};
use serde_json::Value;

use crate::error::{Error, Result};

/// Largest accepted side, for decoded images and for configured sizes.
pub const MAX_SIDE: u32 = 1 << 15;
/// Image memory is bounded (the documented cap, docs/reliability.md): the decoder allocates at
/// most `MAX_DECODE_BYTES` (a bomb, a small file with huge header dimensions, fails there);
/// an 8-bit luma or RGB copy, made only when the decoder produced another format, is capped
/// the same; the horizontal pass and the resized image hold at most `MAX_RESIZED_PIXELS`
/// pixels each (3 bytes per pixel), so an extreme aspect ratio cannot resize a 1-pixel strip
/// into gigabytes. In all at most 512 + 512 + 192 + 192 MiB.
const MAX_DECODE_BYTES: u64 = 512 << 20;
/// See `MAX_DECODE_BYTES`.
const MAX_RESIZED_PIXELS: u64 = 1 << 26;

/// timm's default `crop_pct`, used by the Vim authors' eval transform.
const DEFAULT_CROP_PCT: f64 = 0.875;
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpolation {
    Nearest,
    Bilinear,
    Bicubic,
}

impl Interpolation {
    /// The image crate's filter for this interpolation: kernel and support (in source pixels
    /// at scale 1). Nearest is its box of support 0 (one source pixel); Catmull-Rom is the
    /// cubic with a = -0.5, PIL's BICUBIC.
    fn kernel(self) -> (fn(f32) -> f32, f32) {
        match self {
            Interpolation::Nearest => (|_| 1.0, 0.0),
            Interpolation::Bilinear => (|x| (1.0 - x.abs()).max(0.0), 1.0),
            Interpolation::Bicubic => (catmull_rom, 2.0),
        }
    }
}

/// The image crate's `bc_cubic_spline(x, 0, 0.5)`, term for term (same rounding).
fn catmull_rom(x: f32) -> f32 {
    let (b, c) = (0.0f32, 0.5f32);
    let a = x.abs();
    let k = if a < 1.0 {
        (12.0 - 9.0 * b - 6.0 * c) * a.powi(3)
            + (-18.0 + 12.0 * b + 6.0 * c) * a.powi(2)
            + (6.0 - 2.0 * b)
    } else if a < 2.0 {
        (-b - 6.0 * c) * a.powi(3)
            + (6.0 * b + 30.0 * c) * a.powi(2)
            + (-12.0 * b - 48.0 * c) * a
            + (8.0 * b + 24.0 * c)
    } else {
        0.0
    };
    k / 6.0
}

/// Per output index along one axis of `len` source pixels resampled to `new_len`: the first
/// source index and the normalised weights, computed as the image crate's
/// `horizontal_sample` / `vertical_sample` do.
fn axis_weights(len: u32, new_len: u32, interpolation: Interpolation) -> Vec<(usize, Vec<f32>)> {
    let (kernel, support) = interpolation.kernel();
    let ratio = len as f32 / new_len as f32;
    let sratio = ratio.max(1.0);
    let src_support = support * sratio;
    (0..new_len)
        .map(|out| {
            let center = (out as f32 + 0.5) * ratio;
            let left = ((center - src_support).floor() as i64).clamp(0, i64::from(len) - 1);
            let right = ((center + src_support).ceil() as i64).clamp(left + 1, i64::from(len));
            let mut ws: Vec<f32> = (left..right)
                .map(|i| kernel((i as f32 - (center - 0.5)) / sratio))
                .collect();
            let sum: f32 = ws.iter().sum();
            ws.iter_mut().for_each(|w| *w /= sum);
            (left as usize, ws)
        })
        .collect()
}

/// Resample 8-bit `[h, w, c]` pixels along one axis (`horizontal`: to `new_len` columns, else
/// rows): f32 sums in the image crate's order, clamped and rounded to 8 bits, so the result is
/// its `resize_exact` over that axis. That call keeps an f32 RGBA copy of the whole image (16
/// bytes per source pixel); this needs only the 8-bit output.
fn resample_axis(
    src: &[u8],
    (h, w, c): (usize, usize, usize),
    new_len: u32,
    horizontal: bool,
    interpolation: Interpolation,
) -> Vec<u8> {
    let len = if horizontal { w } else { h } as u32;
    let weights = axis_weights(len, new_len, interpolation);
    let (out_h, out_w) = if horizontal {
        (h, new_len as usize)
    } else {
        (new_len as usize, w)
    };
    // Source index of tap `i` of output (y, x) along the axis, channel 0.
    let (step, line) = if horizontal { (c, w * c) } else { (w * c, c) };
    let mut out = Vec::with_capacity(out_h * out_w * c);
    for y in 0..out_h {
        for x in 0..out_w {
            let (along, (left, ws)) = if horizontal {
                (y * line, &weights[x])
            } else {
                (x * line, &weights[y])
            };
            for k in 0..c {
                let base = along + left * step + k;
                let t = ws
                    .iter()
                    .enumerate()
                    .fold(0.0f32, |t, (i, w)| t + f32::from(src[base + i * step]) * w);
                out.push(t.clamp(0.0, 255.0).round() as u8);
            }
        }
    }
    out
}

/// An eval transform: `[channels, crop_h, crop_w]` f32 out of any decoded image.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    resize_shorter: u32,
    /// (height, width)
    crop: (u32, u32),
    interpolation: Interpolation,
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Preprocess {
    /// Checked constructor. `mean` and `std` are in [0, 1] pixel units (timm's), one value per
    /// channel; 1 channel means luma input, 3 means RGB.
    pub fn new(
        resize_shorter: u32,
        crop: (u32, u32),
        interpolation: Interpolation,
        mean: Vec<f32>,
        std: Vec<f32>,
    ) -> Result<Self> {
        let bad = |m: String| Err(Error::InvalidInput(format!("preprocess: {m}")));
        for (name, v) in [
            ("resize_shorter", resize_shorter),
            ("crop height", crop.0),
            ("crop width", crop.1),
        ] {
            if v == 0 || v > MAX_SIDE {
                return bad(format!("{name} must be in 1..={MAX_SIDE}, got {v}"));
            }
        }
        if !(mean.len() == 1 || mean.len() == 3) || std.len() != mean.len() {
            return bad(format!(
                "mean and std need 1 or 3 values each, got {} and {}",
                mean.len(),
                std.len()
            ));
        }
        if let Some(m) = mean.iter().find(|m| !(0.0..=1.0).contains(*m)) {
            // mmcls configs write 0-255 values (123.675); taking them as [0, 1] units would
            // silently produce garbage.
            return bad(format!(
                "mean {m} is outside [0, 1]; values are in [0, 1] pixel units (divide 0-255 values by 255)"
            ));
        }
        if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return bad(format!("std must be positive and finite, got {s}"));
        }
        Ok(Preprocess {
            resize_shorter,
            crop,
            interpolation,
            mean,
            std,
        })
    }

    /// The ImageNet eval transform of timm with `crop_pct` 0.875 (the Vim authors'):
    /// shorter side to floor(min(h, w) / 0.875), bicubic, center crop `(h, w)`, ImageNet
    /// mean/std. For a non-square size timm resizes both sides exactly (changing the aspect
    /// ratio); this keeps the aspect ratio instead.
    pub fn imagenet(crop: (u32, u32)) -> Result<Self> {
        let shorter = (f64::from(crop.0.min(crop.1)) / DEFAULT_CROP_PCT).floor() as u32;
        Self::new(
            shorter,
            crop,
            Interpolation::Bicubic,
            IMAGENET_MEAN.to_vec(),
            IMAGENET_STD.to_vec(),
        )
    }

    /// From a model's `config.json`: its optional `preprocess` object
    /// (`resize_shorter`, `crop` [h, w] or an int, `interpolation` "bicubic" | "bilinear" |
    /// "nearest", `mean`, `std`); fields it lacks take [`Preprocess::imagenet`]'s values for
    /// the config's `img_size`. `path` names the config in errors.
    pub fn from_config(config: &Value, path: &Path) -> Result<Self> {
        let err = |message: String| Error::Config {
            path: path.to_path_buf(),
            message,
        };
        let field = |obj: &Value, key: &str| obj.get(key).filter(|v| !v.is_null()).cloned();
        let pre = match field(config, "preprocess") {
            None => Value::Object(Default::default()),
            Some(v) if v.is_object() => v,
            Some(v) => return Err(err(format!("`preprocess` must be an object, got {v}"))),
        };
        if let Some(key) = pre.as_object().and_then(|o| {
            o.keys().find(|k| {
                !matches!(
                    k.as_str(),
                    "resize_shorter" | "crop" | "interpolation" | "mean" | "std"
                )
            })
        }) {
            // A typo (`resize_short`) would otherwise fall back to a default without a word.
            return Err(err(format!("unknown field `preprocess.{key}`")));
        }

        let crop = match (field(&pre, "crop"), field(config, "img_size")) {
            (Some(v), _) => size_pair(&v).ok_or_else(|| {
                err(format!(
                    "`preprocess.crop` must be a positive integer or [h, w], got {v}"
                ))
            })?,
            (None, Some(v)) => size_pair(&v).ok_or_else(|| {
                err(format!(
                    "`img_size` must be a positive integer or [h, w], got {v}"
                ))
            })?,
            (None, None) => return Err(err("missing `img_size` (or `preprocess.crop`)".into())),
        };
        let defaults = Self::imagenet(crop).map_err(|e| err(e.to_string()))?;

        let resize_shorter = match field(&pre, "resize_shorter") {
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    err(format!(
                        "`preprocess.resize_shorter` must be a positive integer, got {v}"
                    ))
                })?,
            None => defaults.resize_shorter,
        };
        let interpolation = match field(&pre, "interpolation") {
            Some(v) => match v.as_str() {
                Some("bicubic") => Interpolation::Bicubic,
                Some("bilinear") => Interpolation::Bilinear,
                Some("nearest") => Interpolation::Nearest,
                _ => {
                    return Err(err(format!(
                        "`preprocess.interpolation` must be \"bicubic\", \"bilinear\" or \"nearest\", got {v}"
                    )))
                }
            },
            None => defaults.interpolation,
        };
        let floats = |key: &str, default: &[f32]| -> Result<Vec<f32>> {
            let Some(v) = field(&pre, key) else {
                return Ok(default.to_vec());
            };
            v.as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|x| x.as_f64().map(|x| x as f32))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| {
                    err(format!(
                        "`preprocess.{key}` must be a list of numbers, got {v}"
                    ))
                })
        };
        let mean = floats("mean", &defaults.mean)?;
        let std = floats("std", &defaults.std)?;

        // A 1-channel model with no `preprocess` would get ImageNet's 3-channel defaults.
        let channels = ["in_chans", "num_channels", "channels"]
            .iter()
            .find_map(|k| field(config, k).and_then(|v| v.as_u64()));
        if let Some(c) = channels {
            if c as usize != mean.len() {
                return Err(err(format!(
                    "the model takes {c} input channels but the preprocess mean/std have {}; \
                     give `preprocess.mean` and `preprocess.std` with {c} values",
                    mean.len()
                )));
            }
        }

        Self::new(resize_shorter, crop, interpolation, mean, std).map_err(|e| match e {
            Error::InvalidInput(m) => err(m),
            e => e,
        })
    }

    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// (height, width) of the output.
    pub fn crop(&self) -> (u32, u32) {
        self.crop
    }

    pub fn resize_shorter(&self) -> u32 {
        self.resize_shorter
    }

    pub fn interpolation(&self) -> Interpolation {
        self.interpolation
    }

    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    pub fn std(&self) -> &[f32] {
        &self.std
    }

    /// `[channels, crop_h, crop_w]`, the shape of one [`Preprocess::apply`] output.
    pub fn output_shape(&self) -> [usize; 3] {
        [self.channels(), self.crop.0 as usize, self.crop.1 as usize]
    }

    /// CHW f32 of `[channels, crop_h, crop_w]`.
    ///
    /// Alpha is dropped, not composited (PIL's `convert('RGB')`, which timm and mmcls use);
    /// 16-bit samples become round(v / 257) first (Pillow keeps the high byte of 16-bit RGB,
    /// at most one level apart, and saturates 16-bit gray at 255, a quirk not copied). Where the resized image is smaller than the crop, the crop is padded with
    /// black (0 before normalization), as torchvision's `CenterCrop` does.
    pub fn apply(&self, img: &DynamicImage) -> Result<Vec<f32>> {
        let (w, h) = (img.width(), img.height());
        if w == 0 || h == 0 {
            return Err(Error::InvalidInput(format!("image of size {w}x{h}")));
        }
        // 8-bit luma or RGB, borrowed when the decoder made that already; a copy (gray to RGB
        // triples the size) is capped like the decoder's output.
        let c = self.channels();
        let copy_bytes = u64::from(w) * u64::from(h) * c as u64;
        if copy_bytes > MAX_DECODE_BYTES {
            return Err(Error::InvalidInput(format!(
                "image of size {w}x{h} needs {copy_bytes} bytes as {c}-channel 8-bit pixels, over {MAX_DECODE_BYTES}"
            )));
        }
        let pixels: Cow<[u8]> = match (c, img) {
            (1, DynamicImage::ImageLuma8(g)) => Cow::Borrowed(g.as_raw()),
            (1, _) => Cow::Owned(to_pil_luma(img).into_raw()),
            (_, DynamicImage::ImageRgb8(rgb)) => Cow::Borrowed(rgb.as_raw()),
            _ => Cow::Owned(img.to_rgb8().into_raw()),
        };

        // torchvision `Resize(int)`: the shorter side becomes `resize_shorter`, the longer one
        // int(size * long / short), evaluated in that order in double precision.
        let (short, long) = (w.min(h), w.max(h));
        let s = self.resize_shorter;
        let new_long = (f64::from(s) * f64::from(long) / f64::from(short)) as u64;
        let (new_w, new_h) = if w <= h {
            (u64::from(s), new_long)
        } else {
            (new_long, u64::from(s))
        };
        // The horizontal pass's output (h x new_w) and the resized image are each capped.
        for (what, pixels) in [
            ("resize to", new_w * new_h),
            ("resample to", new_w * u64::from(h)),
        ] {
            if pixels > MAX_RESIZED_PIXELS {
                return Err(Error::InvalidInput(format!(
                    "image of size {w}x{h} would {what} {pixels} pixels, over {MAX_RESIZED_PIXELS} (resize to {new_w}x{new_h})"
                )));
            }
        }
        let (new_w, new_h) = (new_w as u32, new_h as u32);
        // Pillow resizes horizontally first and rounds that pass to 8 bits before the vertical
        // one (one two-axis pass with an f32 intermediate differs by up to 4 levels where
        // bicubic overshoot gets clipped in between). A pass over an unchanged axis would be
        // an exact copy, so it is skipped.
        let (wu, hu) = (w as usize, h as usize);
        let pixels = if new_w == w {
            pixels
        } else {
            Cow::Owned(resample_axis(
                &pixels,
                (hu, wu, c),
                new_w,
                true,
                self.interpolation,
            ))
        };
        let pixels = if new_h == h {
            pixels
        } else {
            let dims = (hu, new_w as usize, c);
            Cow::Owned(resample_axis(
                &pixels,
                dims,
                new_h,
                false,
                self.interpolation,
            ))
        };
        Ok(self.crop_normalize(&pixels, new_h, new_w))
    }

    /// [`Preprocess::apply`] on raw 8-bit luma pixels, row-major `[h, w]` (MNIST's stored
    /// form). A 3-channel model gets the value repeated, as PIL's `convert('RGB')` would.
    pub fn apply_gray_u8(&self, pixels: &[u8], h: u32, w: u32) -> Result<Vec<f32>> {
        if pixels.len() as u64 != u64::from(h) * u64::from(w) {
            return Err(Error::InvalidInput(format!(
                "{} gray pixels for a {h}x{w} image",
                pixels.len()
            )));
        }
        if self.channels() == 1 && (h, w) == self.crop && h.min(w) == self.resize_shorter {
            // Already the model's size: no resize, no crop, no copy.
            return Ok(self.crop_normalize(pixels, h, w));
        }
        let img = GrayImage::from_raw(w, h, pixels.to_vec()).ok_or_else(|| {
            Error::InvalidInput(format!("{} gray pixels for a {h}x{w} image", pixels.len()))
        })?;
        self.apply(&DynamicImage::ImageLuma8(img))
    }

    /// Center crop of `hwc` (`[h, w, channels]` 8-bit), padded with 0 where it is smaller than
    /// the crop, then scaled and normalized into CHW. Offsets follow torchvision `CenterCrop`:
    /// top = round((h - crop_h) / 2) with Python's round (half to even); padding puts
    /// (crop_h - h) / 2 (floor) rows above.
    fn crop_normalize(&self, hwc: &[u8], h: u32, w: u32) -> Vec<f32> {
        let c = self.channels();
        let (ch, cw) = (self.crop.0 as usize, self.crop.1 as usize);
        let offset = |size: u32, crop: usize| -> isize {
            let size = size as isize;
            let crop = crop as isize;
            if size >= crop {
                ((size - crop) as f64 / 2.0).round_ties_even() as isize
            } else {
                -((crop - size) / 2)
            }
        };
        let (top, left) = (offset(h, ch), offset(w, cw));
        let (h, w) = (h as isize, w as isize);
        let mut out = Vec::with_capacity(c * ch * cw);
        for k in 0..c {
            // torchvision: ToTensor divides by 255, Normalize subtracts and divides, in f32.
            let (mean, std) = (self.mean[k], self.std[k]);
            for y in 0..ch as isize {
                let sy = y + top;
                for x in 0..cw as isize {
                    let sx = x + left;
                    let v = if (0..h).contains(&sy) && (0..w).contains(&sx) {
                        hwc[((sy * w + sx) as usize) * c + k]
                    } else {
                        0
                    };
                    out.push((f32::from(v) / 255.0 - mean) / std);
                }
            }
        }
        out
    }
}

/// Stack equally shaped [`Preprocess::apply`] outputs into `[batch, C, H, W]`.
pub fn batch<T: AsRef<[f32]>>(images: &[T]) -> Result<Vec<f32>> {
    let Some(first) = images.first() else {
        return Ok(Vec::new());
    };
    let len = first.as_ref().len();
    let mut out = Vec::with_capacity(len * images.len());
    for (i, img) in images.iter().enumerate() {
        let img = img.as_ref();
        if img.len() != len {
            return Err(Error::InvalidInput(format!(
                "batch image {i} has {} values, image 0 has {len}",
                img.len()
            )));
        }
        out.extend_from_slice(img);
    }
    Ok(out)
}

/// Largest image file read (checked before reading).
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;

/// Decode a PNG, JPEG, WebP or BMP file (format from its bytes, not its name). Only a regular
/// file is opened (a FIFO would block forever).
pub fn load_image(path: impl AsRef<Path>) -> Result<DynamicImage> {
    let path = path.as_ref();
    let bytes = crate::loader::read_regular_file(path, MAX_IMAGE_FILE_BYTES)?;
    decode_image(path, &bytes)
}

/// [`load_image`] on bytes already in memory; `label` names them in errors.
pub fn decode_image(label: impl Into<PathBuf>, bytes: &[u8]) -> Result<DynamicImage> {
    let path = label.into();
    let bad = |message: String| Error::Image {
        path: path.clone(),
        message,
    };
    if bytes.is_empty() {
        // Said plainly rather than as "unrecognized format".
        return Err(bad("empty file".into()));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::io(&path, e))?;
    match reader.format() {
        None => {
            return Err(bad(
                "unrecognized format (expected PNG, JPEG, WebP or BMP)".into()
            ))
        }
        // The JPEG decoder fills a scan cut short with gray and reports success.
        Some(ImageFormat::Jpeg) if !jpeg_is_complete(bytes) => {
            return Err(bad(
                "truncated JPEG (no end-of-image marker after the last scan)".into(),
            ))
        }
        // image-webp decodes into RGBA first, past what the allocation limit below counts
        // (found by tests/fuzz.rs).
        Some(ImageFormat::WebP) => {
            let (w, h) = ImageReader::with_format(Cursor::new(bytes), ImageFormat::WebP)
                .into_dimensions()
                .map_err(|e| bad(e.to_string()))?;
            let rgba = 4 * u64::from(w) * u64::from(h);
            if rgba > MAX_DECODE_BYTES {
                return Err(bad(format!(
                    "WebP of {w}x{h} decodes through {rgba} bytes of RGBA, over {MAX_DECODE_BYTES}"
                )));
            }
        }
        Some(_) => {}
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| bad(e.to_string()))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(bad(format!(
            "image has size {}x{}",
            img.width(),
            img.height()
        )));
    }
    Ok(img)
}

/// Whether an end-of-image marker (FF D9) follows the last start-of-scan (FF DA). In scan data
/// an FF byte is always followed by 00 or a restart marker, so neither pair occurs there by
/// chance; an EXIF thumbnail's own markers come before the main image's scans.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) => eoi > sos,
        _ => false,
    }
}

/// PIL's 'L' conversion. Gray sources keep their values; color ones use PIL's fixed-point
/// ITU-R 601-2 luma (L = R*299/1000 + G*587/1000 + B*114/1000), not the image crate's Rec. 709
/// weights.
fn to_pil_luma(img: &DynamicImage) -> GrayImage {
    if !img.color().has_color() {
        return img.to_luma8();
    }
    let rgb = img.to_rgb8();
    GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
        let [r, g, b] = rgb.get_pixel(x, y).0.map(u32::from);
        image::Luma([((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8])
    })
}

/// A positive int or a two-element [h, w] list.
fn size_pair(v: &Value) -> Option<(u32, u32)> {
    let one = |v: &Value| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n > 0)
    };
    match v {
        Value::Array(a) if a.len() == 2 => Some((one(&a[0])?, one(&a[1])?)),
        _ => one(v).map(|n| (n, n)),
    }
}
