//! Chart text drawn with each glyph where the font puts it.
//!
//! Why this file: plotters 0.3.7 draws `ab_glyph` text placing every glyph's bounding
//! box at the pen position, ignoring the glyph's left side bearing, so `LABEL_0`
//! renders as `LABEL _0` and `n=37` as `n= 37` (the underscore's bearing is negative,
//! the equals sign's large). Class names are the text a reader of the charts needs most,
//! so the charts' own labels are laid out here with `ab_glyph` (the rasterizer plotters
//! already uses) and drawn pixel by pixel through the backend: advance widths and
//! kerning as in `estimate_layout`, each outline offset by its own pixel bounds.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use plotters::element::{Drawable, PointCollection};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};
use plotters_backend::{BackendColor, BackendCoord, DrawingErrorKind};

/// One line of text at `pos`, anchored by (`h`, `v`), optionally rotated 270 degrees
/// (reading bottom to top, as a y-axis title).
pub(crate) struct Label {
    pub text: String,
    pub pos: (i32, i32),
    pub size: f32,
    pub h: HPos,
    pub v: VPos,
    pub color: RGBColor,
    pub rotate270: bool,
}

impl Label {
    pub(crate) fn new(text: impl Into<String>, pos: (i32, i32), size: f64) -> Self {
        Label {
            text: text.into(),
            pos,
            size: size as f32,
            h: HPos::Left,
            v: VPos::Top,
            color: BLACK,
            rotate270: false,
        }
    }
    pub(crate) fn anchor(mut self, h: HPos, v: VPos) -> Self {
        (self.h, self.v) = (h, v);
        self
    }
    pub(crate) fn color(mut self, c: RGBColor) -> Self {
        self.color = c;
        self
    }
    pub(crate) fn rotate270(mut self) -> Self {
        self.rotate270 = true;
        self
    }
}

fn font() -> FontRef<'static> {
    FontRef::try_from_slice(super::charts::FONT).expect("the embedded font parses (unit-tested)")
}

/// The advance width of `text` at `size` pixels (with kerning).
pub(crate) fn width(text: &str, size: f64) -> f32 {
    let f = font();
    let s = f.as_scaled(PxScale::from(size as f32));
    let mut w = 0.0;
    let mut prev = None;
    for c in text.chars() {
        let id = s.glyph_id(c);
        if let Some(p) = prev {
            w += s.kern(p, id);
        }
        w += s.h_advance(id);
        prev = Some(id);
    }
    w
}

impl<'a> PointCollection<'a, (i32, i32)> for &'a Label {
    type Point = &'a (i32, i32);
    type IntoIter = std::iter::Once<&'a (i32, i32)>;
    fn point_iter(self) -> Self::IntoIter {
        std::iter::once(&self.pos)
    }
}

impl<DB: DrawingBackend> Drawable<DB> for Label {
    fn draw<I: Iterator<Item = BackendCoord>>(
        &self,
        mut points: I,
        backend: &mut DB,
        _: (u32, u32),
    ) -> Result<(), DrawingErrorKind<DB::ErrorType>> {
        let Some((x0, y0)) = points.next() else {
            return Ok(());
        };
        let f = font();
        let scale = PxScale::from(self.size);
        let s = f.as_scaled(scale);
        let w = width(&self.text, self.size as f64);
        let (ascent, descent) = (s.ascent(), s.descent());
        // Pen start and baseline, in the text's own frame (x along the text).
        let dx = match self.h {
            HPos::Left => 0.0,
            HPos::Center => -w / 2.0,
            HPos::Right => -w,
        };
        let baseline = match self.v {
            VPos::Top => ascent,
            VPos::Center => (ascent + descent) / 2.0,
            VPos::Bottom => descent,
        };
        let rgb = self.color;
        let mut pen = dx;
        let mut prev = None;
        for c in self.text.chars() {
            let id = s.glyph_id(c);
            if let Some(p) = prev {
                pen += s.kern(p, id);
            }
            prev = Some(id);
            let glyph = id.with_scale_and_position(scale, ab_glyph::point(pen, baseline));
            if let Some(q) = f.outline_glyph(glyph) {
                let b = q.px_bounds();
                let mut px: Vec<(i32, i32, f32)> = vec![];
                q.draw(|x, y, cov| {
                    if cov > 0.0 {
                        px.push((b.min.x as i32 + x as i32, b.min.y as i32 + y as i32, cov));
                    }
                });
                for (tx, ty, cov) in px {
                    // Text frame -> canvas: rotated 270 degrees, x runs upwards.
                    let (cx, cy) = if self.rotate270 {
                        (x0 + ty, y0 - tx)
                    } else {
                        (x0 + tx, y0 + ty)
                    };
                    backend.draw_pixel(
                        (cx, cy),
                        BackendColor {
                            alpha: cov.min(1.0) as f64,
                            rgb: (rgb.0, rgb.1, rgb.2),
                        },
                    )?;
                }
            }
            pen += s.h_advance(id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Columns of a rendered label that hold ink.
    fn ink_columns(text: &str) -> Vec<bool> {
        let (w, h) = (200u32, 30u32);
        let mut buf = vec![255u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            root.draw(&Label::new(text, (5, 5), 16.0)).unwrap();
            root.present().unwrap();
        }
        (0..w)
            .map(|x| (0..h).any(|y| buf[((y * w + x) * 3) as usize] < 128))
            .collect()
    }

    /// The widest run of blank columns between the first and last ink.
    fn widest_gap(cols: &[bool]) -> usize {
        let first = cols.iter().position(|&c| c).unwrap();
        let last = cols.iter().rposition(|&c| c).unwrap();
        cols[first..=last]
            .split(|&c| c)
            .map(|g| g.len())
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn underscore_and_equals_sit_where_the_font_puts_them() {
        // No gap in "A_B" or "n=3" wider than the gap between the letters of "AB"
        // plus a pixel (plotters' own drawing leaves 3-4 blank columns there).
        let ab = widest_gap(&ink_columns("AB"));
        for t in ["A_B", "L_0", "n=3"] {
            let g = widest_gap(&ink_columns(t));
            assert!(g <= ab + 2, "{t}: blank run of {g} columns (AB: {ab})");
        }
        // The advance width is the font's (as plotters' layout estimate has it).
        assert!((width("LABEL_0", 13.0) - width("LABEL", 13.0) - width("_0", 13.0)).abs() < 1.0);
    }
}
