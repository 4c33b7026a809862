//! PNG figures of attention and Reversed Attention maps, drawn by hand (no plotting stack):
//! a small RGB canvas, the font8x8 bitmap glyphs for text, and matplotlib-like colormaps.
//!
//! Every figure is a row of [`Panel`]s: a titled heatmap with tick labels on the left and below,
//! axis names, and a colour bar with printed values on its right.

use std::fmt::Write as _;

use font8x8::legacy::BASIC_LEGACY;

type Rgb = [u8; 3];

const INK: Rgb = [25, 25, 25];
const AXIS: Rgb = [90, 90, 90];
/// Upper triangle (j > i): keys a causal query never sees.
const MASK: Rgb = [220, 220, 220];
/// NaN cells: amber appears in none of the colormaps below, so it stands out.
const NAN: Rgb = [255, 190, 0];

/// ColorBrewer anchors behind matplotlib's `Greens`, `Purples` and `RdBu` (red = low = negative).
const GREENS: &[Rgb] = &[
    [247, 252, 245],
    [229, 245, 224],
    [199, 233, 192],
    [161, 217, 155],
    [116, 196, 118],
    [65, 171, 93],
    [35, 139, 69],
    [0, 109, 44],
    [0, 68, 27],
];
const PURPLES: &[Rgb] = &[
    [252, 251, 253],
    [239, 237, 245],
    [218, 218, 235],
    [188, 189, 220],
    [158, 154, 200],
    [128, 125, 186],
    [106, 81, 163],
    [84, 39, 143],
    [63, 0, 125],
];
const RDBU: &[Rgb] = &[
    [103, 0, 31],
    [178, 24, 43],
    [214, 96, 77],
    [244, 165, 130],
    [253, 219, 199],
    [247, 247, 247],
    [209, 229, 240],
    [146, 197, 222],
    [67, 147, 195],
    [33, 102, 172],
    [5, 48, 97],
];

const MARGIN: usize = 24;
const PANEL_GAP: usize = 56;
/// Titles, axis names and colour-bar values are always drawn at ×2 (16 px) for legibility.
const BIG: usize = 2;
const MAX_LABEL_CHARS: usize = 16;

/// Frobenius norm of A per head (Greens) beside that of R (Purples); layer 0 at the top.
pub fn norms_png(
    attention_norms: &[f32],
    ra_norms: &[f32],
    n_layer: usize,
    n_head: usize,
) -> Vec<u8> {
    norms_figure(attention_norms, ra_norms, n_layer, n_head)
        .0
        .to_png()
}

/// One head: A (Greens, 0..1) beside R (RdBu, ±max|R|), causal upper triangle masked in grey.
pub fn head_png(
    layer: usize,
    head: usize,
    tokens: &[String],
    attention: &[f32],
    ra: &[f32],
) -> Vec<u8> {
    head_figure(layer, head, tokens, attention, ra).0.to_png()
}

/// The figure plus each map's pixel rectangle `(x, y, cell)`, so tests can probe cells.
fn norms_figure(
    a: &[f32],
    r: &[f32],
    n_layer: usize,
    n_head: usize,
) -> (Canvas, Vec<(usize, usize, usize)>) {
    let cells = n_layer * n_head;
    assert_eq!(a.len(), cells, "attention_norms must be n_layer × n_head");
    assert_eq!(r.len(), cells, "ra_norms must be n_layer × n_head");
    let cell = (600 / n_layer.max(n_head).max(1)).clamp(12, 48);
    // Numeric ticks: every k-th index so 16 px digits never touch.
    let row_labels = index_labels(n_layer, every(cell, 8 * BIG + 2));
    let head_w = 8 * BIG * n_head.saturating_sub(1).to_string().len();
    let col_labels = index_labels(n_head, every(cell, head_w + 8));
    let panel = |title: &str, values: &'static str, v: &[f32], cmap| {
        let (lo, hi) = finite_range(v.iter().copied());
        Panel {
            title: title.to_string(),
            rows: n_layer,
            cols: n_head,
            cell,
            values: v.to_vec(),
            mask_upper: false,
            cmap,
            lo,
            hi,
            ticks: spaced(lo, hi),
            bar_title: values.to_string(),
            row_axis: "layer",
            col_axis: "head",
            row_labels: row_labels.clone(),
            col_labels: col_labels.clone(),
            label_scale: BIG,
            rotate_cols: false,
        }
    };
    compose(&[
        panel(
            "attention  \u{2016}A\u{2016}_F",
            "\u{2016}A\u{2016}_F",
            a,
            GREENS,
        ),
        panel(
            "reversed attention  \u{2016}R\u{2016}_F",
            "\u{2016}R\u{2016}_F",
            r,
            PURPLES,
        ),
    ])
}

fn head_figure(
    layer: usize,
    head: usize,
    tokens: &[String],
    a: &[f32],
    r: &[f32],
) -> (Canvas, Vec<(usize, usize, usize)>) {
    let t = tokens.len();
    assert_eq!(a.len(), t * t, "attention must be T × T");
    assert_eq!(r.len(), t * t, "ra must be T × T");
    let cell = (640 / t.max(1)).clamp(4, 32);
    // ×2 token labels only when a row is tall enough to hold a 16 px glyph.
    let label_scale = if cell >= 18 { 2 } else { 1 };
    let k = every(cell, 8 * label_scale + 2);
    // Sparse labels carry their position (right-aligned, so it lines up at the axis),
    // since neighbouring labels no longer tell it.
    let digits = t.saturating_sub(1).to_string().len();
    let label = |i: usize| match k {
        1 => token_label(&tokens[i]),
        _ => format!("{} {i:>digits$}", token_label(&tokens[i])),
    };
    let labels: Vec<(usize, String)> = (0..t).step_by(k).map(|i| (i, label(i))).collect();
    // Colour limits from what is visible (j ≤ i); the title norm is over the whole matrix.
    let visible = |v: &[f32]| -> Vec<f32> {
        (0..t * t)
            .filter(|&n| n % t <= n / t)
            .map(|n| v[n])
            .collect()
    };
    let m = visible(r)
        .iter()
        .filter(|x| x.is_finite())
        .fold(0f32, |m, x| m.max(x.abs()));
    let norm = r
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt() as f32;
    let panel = |title: String, bar: &str, v: &[f32], cmap, lo: f32, hi: f32| Panel {
        title,
        rows: t,
        cols: t,
        cell,
        values: v.to_vec(),
        mask_upper: true,
        cmap,
        lo,
        hi,
        ticks: spaced(lo, hi),
        bar_title: bar.to_string(),
        row_axis: "query",
        col_axis: "key",
        row_labels: labels.clone(),
        col_labels: labels.clone(),
        label_scale,
        rotate_cols: true,
    };
    compose(&[
        panel(
            format!("layer {layer} head {head} \u{2014} attention"),
            "A",
            a,
            GREENS,
            0.0,
            1.0,
        ),
        panel(
            format!("reversed attention  \u{2016}R\u{2016}={}", fmt_num(norm)),
            "R",
            r,
            RDBU,
            -m,
            m,
        ),
    ])
}

/// Lays panels out left to right on a white canvas.
fn compose(panels: &[Panel]) -> (Canvas, Vec<(usize, usize, usize)>) {
    let layouts: Vec<Layout> = panels.iter().map(Panel::layout).collect();
    let w =
        2 * MARGIN + layouts.iter().map(|l| l.w).sum::<usize>() + PANEL_GAP * (panels.len() - 1);
    let h = 2 * MARGIN + layouts.iter().map(|l| l.h).max().unwrap_or(0);
    let mut canvas = Canvas::new(w, h);
    let mut x = MARGIN;
    let mut maps = Vec::new();
    for (p, l) in panels.iter().zip(&layouts) {
        p.draw(&mut canvas, x, MARGIN, l);
        maps.push((x + l.map_x, MARGIN + l.map_y, p.cell));
        x += l.w + PANEL_GAP;
    }
    (canvas, maps)
}

/// A heatmap with its title, tick labels, axis names and colour bar.
struct Panel {
    title: String,
    rows: usize,
    cols: usize,
    cell: usize,
    values: Vec<f32>,
    mask_upper: bool,
    cmap: &'static [Rgb],
    /// Values mapped to the colormap's two ends.
    lo: f32,
    hi: f32,
    ticks: Vec<f32>,
    bar_title: String,
    row_axis: &'static str,
    col_axis: &'static str,
    /// Only the labelled indices (the rest are skipped when rows are too thin).
    row_labels: Vec<(usize, String)>,
    col_labels: Vec<(usize, String)>,
    label_scale: usize,
    rotate_cols: bool,
}

/// Panel-relative positions, computed once and shared by `draw` and `compose`.
struct Layout {
    w: usize,
    h: usize,
    map_x: usize,
    map_y: usize,
    bar_x: usize,
    bar_h: usize,
    title_x: usize,
    col_axis_y: usize,
}

const TICK: usize = 4;
const BAR_W: usize = 18;
const BAR_MIN_H: usize = 160;

impl Panel {
    fn layout(&self) -> Layout {
        let g = 8 * self.label_scale;
        let big = 8 * BIG;
        let longest =
            |ls: &[(usize, String)]| ls.iter().map(|(_, s)| s.chars().count()).max().unwrap_or(0);
        let map_x = big + 8 + longest(&self.row_labels) * g + TICK + 3;
        // Title row, then the colour bar's title row, then the map.
        let map_y = big + 10 + big + 16;
        let (map_w, map_h) = (self.cols * self.cell, self.rows * self.cell);
        let bar_x = map_x + map_w + 24;
        let bar_h = map_h.max(BAR_MIN_H);
        let tick_w = self
            .ticks
            .iter()
            .map(|&v| fmt_num(v).len())
            .max()
            .unwrap_or(0)
            * big;
        let bar_right =
            (bar_x + BAR_W + TICK + 4 + tick_w).max(bar_x + text_w(&self.bar_title, BIG));
        let title_w = text_w(&self.title, BIG);
        let title_x = (map_x + map_w / 2).saturating_sub(title_w / 2);
        let col_ext = if self.rotate_cols {
            longest(&self.col_labels) * g
        } else {
            g
        };
        let col_axis_y = map_y + map_h + TICK + 3 + col_ext + 10;
        Layout {
            w: bar_right.max(title_x + title_w),
            h: (col_axis_y + big).max(map_y + bar_h + big / 2),
            map_x,
            map_y,
            bar_x,
            bar_h,
            title_x,
            col_axis_y,
        }
    }

    fn color(&self, v: f32) -> Rgb {
        if v.is_nan() {
            return NAN;
        }
        // A flat range (e.g. all-zero R) maps to the middle instead of dividing by zero.
        let t = if self.hi > self.lo {
            (v - self.lo) / (self.hi - self.lo)
        } else {
            0.5
        };
        sample(self.cmap, t)
    }

    fn draw(&self, c: &mut Canvas, ox: usize, oy: usize, l: &Layout) {
        let (g, big) = (8 * self.label_scale, 8 * BIG);
        let (mx, my) = (ox + l.map_x, oy + l.map_y);
        let (mw, mh) = (self.cols * self.cell, self.rows * self.cell);
        c.text(ox + l.title_x, oy, &self.title, BIG, INK);

        for i in 0..self.rows {
            for j in 0..self.cols {
                let col = if self.mask_upper && j > i {
                    MASK
                } else {
                    self.color(self.values[i * self.cols + j])
                };
                c.fill(
                    mx + j * self.cell,
                    my + i * self.cell,
                    self.cell,
                    self.cell,
                    col,
                );
            }
        }
        c.frame(mx, my, mw, mh, AXIS);

        // Row labels: right-aligned against short tick marks.
        for (i, s) in &self.row_labels {
            let cy = my + i * self.cell + self.cell / 2;
            c.fill(mx - TICK - 1, cy, TICK, 1, AXIS);
            c.text(
                mx - TICK - 3 - text_w(s, self.label_scale),
                cy - g / 2 + 1,
                s,
                self.label_scale,
                INK,
            );
        }
        // Column labels: rotated (reading upwards, ending at the axis) so long tokens never collide.
        let ly = my + mh + 1;
        for (j, s) in &self.col_labels {
            let cx = mx + j * self.cell + self.cell / 2;
            c.fill(cx, ly, 1, TICK, AXIS);
            if self.rotate_cols {
                c.text_up(cx + 1 - g / 2, ly + TICK + 2, s, self.label_scale, INK);
            } else {
                c.text(
                    cx - text_w(s, self.label_scale) / 2,
                    ly + TICK + 2,
                    s,
                    self.label_scale,
                    INK,
                );
            }
        }
        let ax_x = (mx + mw / 2).saturating_sub(text_w(self.col_axis, BIG) / 2);
        c.text(ax_x, oy + l.col_axis_y, self.col_axis, BIG, AXIS);
        let row_ax_y = (my + mh / 2)
            .saturating_sub(text_w(self.row_axis, BIG) / 2)
            .max(my);
        c.text_up(ox, row_ax_y, self.row_axis, BIG, AXIS);

        // Colour bar: high values at the top, as in matplotlib.
        let (bx, bh) = (ox + l.bar_x, l.bar_h);
        c.text(bx, my - big - 14, &self.bar_title, BIG, INK);
        for y in 0..bh {
            let t = 1.0 - y as f32 / (bh - 1) as f32;
            c.fill(bx, my + y, BAR_W, 1, sample(self.cmap, t));
        }
        c.frame(bx, my, BAR_W, bh, AXIS);
        for &v in &self.ticks {
            let t = if self.hi > self.lo {
                (v - self.lo) / (self.hi - self.lo)
            } else {
                0.5
            };
            let y = my + ((1.0 - t) * (bh - 1) as f32).round() as usize;
            c.fill(bx + BAR_W, y, TICK, 1, AXIS);
            c.text(
                bx + BAR_W + TICK + 4,
                y + 1 - big / 2,
                &fmt_num(v),
                BIG,
                INK,
            );
        }
    }
}

/// RGB8 pixel buffer on a white background; drawing outside it is silently clipped.
struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        let (w, h) = (w.max(1), h.max(1));
        Self {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }

    fn fill(&mut self, x: usize, y: usize, w: usize, h: usize, c: Rgb) {
        for yy in y..(y + h).min(self.h) {
            for xx in x..(x + w).min(self.w) {
                let i = (yy * self.w + xx) * 3;
                self.px[i..i + 3].copy_from_slice(&c);
            }
        }
    }

    /// One-pixel outline just outside the rectangle.
    fn frame(&mut self, x: usize, y: usize, w: usize, h: usize, c: Rgb) {
        let (x0, y0) = (x.saturating_sub(1), y.saturating_sub(1));
        self.fill(x0, y0, w + 2, 1, c);
        self.fill(x0, y + h, w + 2, 1, c);
        self.fill(x0, y0, 1, h + 2, c);
        self.fill(x + w, y0, 1, h + 2, c);
    }

    #[cfg(test)]
    fn pixel(&self, x: usize, y: usize) -> Rgb {
        let i = (y * self.w + x) * 3;
        [self.px[i], self.px[i + 1], self.px[i + 2]]
    }

    fn text(&mut self, x: usize, y: usize, s: &str, scale: usize, c: Rgb) {
        self.glyphs(s, scale, |gx, gy| (x + gx, y + gy), c);
    }

    /// Text rotated 90° counter-clockwise; (x, y) is the top-left of its bounding box.
    fn text_up(&mut self, x: usize, y: usize, s: &str, scale: usize, c: Rgb) {
        let w = text_w(s, scale);
        self.glyphs(s, scale, |gx, gy| (x + gy, y + w - scale - gx), c);
    }

    /// Paints each set glyph bit as a scale×scale block at `place(text_x, text_y)`.
    fn glyphs(
        &mut self,
        s: &str,
        scale: usize,
        place: impl Fn(usize, usize) -> (usize, usize),
        c: Rgb,
    ) {
        for (n, ch) in s.chars().enumerate() {
            for (row, bits) in glyph(ch).iter().enumerate() {
                for bit in 0..8 {
                    if bits >> bit & 1 == 1 {
                        let (px, py) = place((n * 8 + bit) * scale, row * scale);
                        self.fill(px, py, scale, scale, c);
                    }
                }
            }
        }
    }

    fn to_png(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, self.w as u32, self.h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().expect("PNG header into memory");
        writer
            .write_image_data(&self.px)
            .expect("PNG data into memory");
        writer.finish().expect("PNG end into memory");
        out
    }
}

/// 8×8 bitmap for a char (bit 0 = leftmost pixel); a few non-ASCII symbols the figures use
/// are drawn here, anything else unsupported becomes '?'.
fn glyph(ch: char) -> [u8; 8] {
    match ch {
        '\u{2016}' => [0x24; 8],                      // ‖ double bar (norms)
        '\u{2014}' => [0, 0, 0, 0xFF, 0, 0, 0, 0],    // — em dash
        '\u{00B7}' => [0, 0, 0, 0x18, 0x18, 0, 0, 0], // · visible space
        '\u{2026}' => [0, 0, 0, 0, 0, 0x5B, 0x5B, 0], // … truncation
        '\u{2212}' => BASIC_LEGACY[b'-' as usize],    // − minus
        c if c.is_ascii() && !c.is_ascii_control() => BASIC_LEGACY[c as usize],
        _ => BASIC_LEGACY[b'?' as usize],
    }
}

fn text_w(s: &str, scale: usize) -> usize {
    s.chars().count() * 8 * scale
}

/// A token as a readable one-line label: escapes, '·' for spaces, '?' for non-ASCII, truncated.
fn token_label(tok: &str) -> String {
    let mut s = String::new();
    for ch in tok.chars() {
        match ch {
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            ' ' => s.push('\u{00B7}'),
            c if c.is_control() => {
                let _ = write!(s, "\\x{:02x}", c as u32);
            }
            c if c.is_ascii() => s.push(c),
            _ => s.push('?'),
        }
    }
    if s.is_empty() {
        return "''".to_string();
    }
    if s.chars().count() > MAX_LABEL_CHARS {
        s = s
            .chars()
            .take(MAX_LABEL_CHARS - 1)
            .chain(['\u{2026}'])
            .collect();
    }
    s
}

/// Smallest "nice" step (1, 2, 5, 10, 20, …) whose spacing `k * cell` is at least `min_px`.
fn every(cell: usize, min_px: usize) -> usize {
    let cell = cell.max(1);
    (0..)
        .flat_map(|e| [1, 2, 5].map(|m| m * 10usize.pow(e)))
        .find(|k| k * cell >= min_px)
        .unwrap_or(1)
}

fn index_labels(n: usize, k: usize) -> Vec<(usize, String)> {
    (0..n).step_by(k).map(|i| (i, i.to_string())).collect()
}

/// Min and max over finite values; (0, 0) when there are none.
fn finite_range(v: impl Iterator<Item = f32>) -> (f32, f32) {
    let (lo, hi) = v
        .filter(|x| x.is_finite())
        .fold((f32::MAX, f32::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    if lo > hi {
        (0.0, 0.0)
    } else {
        (lo, hi)
    }
}

/// Five evenly spaced colour-bar ticks, or just the one value for a flat range.
fn spaced(lo: f32, hi: f32) -> Vec<f32> {
    if hi > lo {
        (0..5).map(|i| lo + (hi - lo) * i as f32 / 4.0).collect()
    } else {
        vec![lo]
    }
}

/// Linear interpolation between evenly spaced colormap anchors; t is clamped to [0, 1].
fn sample(anchors: &[Rgb], t: f32) -> Rgb {
    if t.is_nan() {
        return NAN;
    }
    let x = t.clamp(0.0, 1.0) * (anchors.len() - 1) as f32;
    let i = (x.floor() as usize).min(anchors.len() - 2);
    let f = x - i as f32;
    let mix = |a: u8, b: u8| (f32::from(a) + (f32::from(b) - f32::from(a)) * f).round() as u8;
    let (a, b) = (anchors[i], anchors[i + 1]);
    [mix(a[0], b[0]), mix(a[1], b[1]), mix(a[2], b[2])]
}

/// Compact number: 3 significant digits, scientific outside [0.01, 10000).
fn fmt_num(v: f32) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.into();
    }
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if (1e-2..1e4).contains(&a) {
        let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    } else {
        let s = format!("{v:.2e}");
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let mant = if mant.contains('.') {
            mant.trim_end_matches('0').trim_end_matches('.')
        } else {
            mant
        };
        format!("{mant}e{exp}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> (u32, u32) {
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = dec.read_info().expect("valid PNG header");
        let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
        let info = reader.next_frame(&mut buf).expect("valid PNG data");
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert!(info.width > 0 && info.height > 0);
        (info.width, info.height)
    }

    fn tokens(t: usize) -> Vec<String> {
        (0..t)
            .map(|i| {
                if i % 3 == 0 {
                    format!(" tok{i}")
                } else {
                    format!("t{i}\n")
                }
            })
            .collect()
    }

    /// Causal rows summing to 1 for A; rows summing to 0 for R.
    fn maps(t: usize) -> (Vec<f32>, Vec<f32>) {
        let mut a = vec![0.0; t * t];
        let mut r = vec![0.0; t * t];
        for i in 0..t {
            for j in 0..=i {
                a[i * t + j] = 1.0 / (i + 1) as f32;
                r[i * t + j] = if i == 0 {
                    0.0
                } else if j == 0 {
                    1e-3
                } else {
                    -1e-3 / i as f32
                };
            }
        }
        (a, r)
    }

    #[test]
    fn head_pngs_decode_for_various_lengths() {
        for t in [1, 7, 300] {
            let (a, r) = maps(t);
            let (w, h) = decode(&head_png(3, 1, &tokens(t), &a, &r));
            assert!(
                w as usize > 2 * t.min(160) && h as usize > t.min(160),
                "T={t}: {w}×{h}"
            );
        }
    }

    #[test]
    fn norms_pngs_decode_small_and_xl() {
        for (l, h) in [(1, 1), (12, 12), (48, 25)] {
            let a: Vec<f32> = (0..l * h).map(|i| 1.0 + i as f32 * 0.01).collect();
            let r: Vec<f32> = (0..l * h).map(|i| 1e-3 * (i % 7) as f32).collect();
            decode(&norms_png(&a, &r, l, h));
        }
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let (a, r) = maps(5);
        let mut a_nan = a.clone();
        a_nan[6] = f32::NAN;
        decode(&head_png(0, 0, &tokens(5), &a_nan, &[0.0; 25]));
        decode(&head_png(0, 0, &[], &[], &[]));
        decode(&norms_png(&[f32::NAN, 0.0], &[0.0, 0.0], 1, 2));
        let (canvas, m) = head_figure(0, 0, &tokens(5), &a_nan, &r);
        let (x, y, cell) = m[0];
        assert_eq!(canvas.pixel(x + cell + cell / 2, y + cell + cell / 2), NAN);
    }

    #[test]
    fn mask_and_diverging_colours() {
        let t = 7;
        let (a, mut r) = maps(t);
        r[6 * t] = -5e-3; // strongly negative
        r[6 * t + 1] = 5e-3; // strongly positive
        let (canvas, m) = head_figure(2, 4, &tokens(t), &a, &r);
        let (x, y, cell) = m[1];
        let centre =
            |i: usize, j: usize| canvas.pixel(x + j * cell + cell / 2, y + i * cell + cell / 2);
        assert_eq!(centre(1, 4), MASK, "upper triangle is masked");
        let [r0, g0, b0] = centre(6, 0);
        assert!(
            r0 > g0 + 60 && r0 > b0 + 60,
            "negative is red: {:?}",
            centre(6, 0)
        );
        let [r1, g1, b1] = centre(6, 1);
        assert!(
            b1 > r1 + 60 && b1 > g1 + 30,
            "positive is blue: {:?}",
            centre(6, 1)
        );
    }

    #[test]
    fn labels_and_numbers() {
        assert_eq!(token_label(" Italy"), "\u{b7}Italy");
        assert_eq!(token_label("\n"), "\\n");
        assert_eq!(token_label("\u{7}é"), "\\x07?");
        assert_eq!(
            token_label(&"x".repeat(40)).chars().count(),
            MAX_LABEL_CHARS
        );
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(0.25), "0.25");
        assert_eq!(fmt_num(1.0), "1");
        assert_eq!(fmt_num(12.3456), "12.3");
        assert_eq!(fmt_num(-1.234e-3), "-1.23e-3");
        assert_eq!(fmt_num(1e-3), "1e-3");
        assert_eq!(every(32, 18), 1);
        assert_eq!(every(4, 10), 5);
    }
}
