//! The look of a `pdf.report`: the embedded font, the A4 page geometry (and so how many rows
//! a page holds), text measurement and cutting, column widths, and drawing the title block,
//! the table and the footer into a document. This module owns pixels and millimetres; it
//! does not own where rows come from (`super::table`) nor the payload (`super`).

use printpdf::{
    Color, FontId, Greyscale, Mm, Op, PaintMode, ParsedFont, PdfDocument, PdfFontHandle, PdfPage,
    PdfSaveOptions, Pt, RawImage, Rect, TextItem, TextMatrix, XObjectId, XObjectTransform,
};

use super::ReportArgs;
use super::table::Table;

/// DejaVu Sans (Bitstream Vera licence, see `assets/DejaVuSans-LICENSE.txt`).
pub(super) static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

// Layout, in millimetres, on A4 portrait. The first page's title block has a fixed height
// (whether or not there is a subtitle or a logo) so the page count depends on rows alone.
const PAGE_W: f32 = 210.0;
const PAGE_H: f32 = 297.0;
const MARGIN: f32 = 15.0;
const TITLE_BAND: f32 = 30.0;
const RUNNING_BAND: f32 = 8.0;
const FOOTER_BAND: f32 = 8.0;
const HEADER_ROW_H: f32 = 7.0;
const ROW_H: f32 = 6.0;
const CELL_PAD: f32 = 1.5;
const TABLE_W: f32 = PAGE_W - 2.0 * MARGIN;
const BODY_PT: f32 = 9.0;
const TITLE_PT: f32 = 18.0;
const SUBTITLE_PT: f32 = 12.0;
const SMALL_PT: f32 = 8.0;
const LOGO_MAX_H: f32 = 22.0;
const LOGO_MAX_W: f32 = 60.0;

const fn rows_fitting(band: f32) -> usize {
    ((PAGE_H - MARGIN - band - (MARGIN + FOOTER_BAND) - HEADER_ROW_H) / ROW_H) as usize
}

/// Table rows on the first page (below the title block).
pub const FIRST_PAGE_ROWS: usize = rows_fitting(TITLE_BAND);
/// Table rows on every later page.
pub const ROWS_PER_PAGE: usize = rows_fitting(RUNNING_BAND);

/// Pages a report of `rows` rows takes (at least one, even when empty).
pub fn page_count(rows: usize) -> usize {
    if rows <= FIRST_PAGE_ROWS {
        1
    } else {
        1 + (rows - FIRST_PAGE_ROWS).div_ceil(ROWS_PER_PAGE)
    }
}

/// Why the report cannot draw `c`, if it cannot: the embedded font has no glyph for it (CJK,
/// most scripts outside Europe), which would print an empty box that a reader or a search
/// sees as nothing; or it belongs to a right-to-left script (Hebrew, Arabic), which would
/// come out with its letters in reverse order and, for Arabic, unjoined, since text is drawn
/// left to right without shaping. Control characters are left to the callers (cells turn
/// them into spaces).
pub(super) fn cannot_draw(font: &ParsedFont, c: char) -> Option<&'static str> {
    use unicode_bidi::{BidiClass, bidi_class};
    if c.is_control() {
        return None;
    }
    if matches!(bidi_class(c), BidiClass::R | BidiClass::AL) {
        return Some("right-to-left scripts (Hebrew, Arabic, ...) are not supported");
    }
    match font.lookup_glyph_index(u32::from(c)) {
        None | Some(0) => Some("the report's font (DejaVu Sans) has no glyph for it"),
        Some(_) => None,
    }
}

/// Text measurement with the embedded font's advance widths.
struct Metrics<'a> {
    font: &'a ParsedFont,
}

impl Metrics<'_> {
    /// Width of `text` at `size_pt`, in millimetres.
    fn width(&self, text: &str, size_pt: f32) -> f32 {
        let units_per_em = f32::from(self.font.units_per_em.max(1));
        let units: f32 = text.chars().map(|c| self.char_units(c)).sum();
        units / units_per_em * size_pt * 25.4 / 72.0
    }

    fn char_units(&self, c: char) -> f32 {
        let gid = self.font.lookup_glyph_index(u32::from(c)).unwrap_or(0);
        f32::from(self.font.get_glyph_width(gid).unwrap_or(0))
    }

    /// `text` cut to fit `max_mm`, ending in `…` when cut.
    fn fit(&self, text: &str, size_pt: f32, max_mm: f32) -> String {
        if self.width(text, size_pt) <= max_mm {
            return text.to_owned();
        }
        let budget = max_mm - self.width("…", size_pt);
        let mut out = String::new();
        let mut used = 0.0;
        for c in text.chars() {
            let w = self.width(c.encode_utf8(&mut [0; 4]), size_pt);
            if used + w > budget {
                break;
            }
            used += w;
            out.push(c);
        }
        out.push('…');
        out
    }
}

/// Column widths: each column's natural width (header and the first rows), scaled so the
/// table spans the page, no column wider than half of it.
fn column_widths(m: &Metrics<'_>, table: &Table) -> Vec<f32> {
    let natural: Vec<f32> = (0..table.columns.len())
        .map(|i| {
            let header = m.width(&table.columns[i], BODY_PT);
            let body = table
                .rows
                .iter()
                .take(500)
                .map(|r| m.width(&r[i].0, BODY_PT))
                .fold(0.0, f32::max);
            (header.max(body) + 2.0 * CELL_PAD).clamp(8.0, TABLE_W / 2.0)
        })
        .collect();
    let total: f32 = natural.iter().sum();
    natural.iter().map(|w| w * TABLE_W / total).collect()
}

fn grey(level: f32) -> Color {
    Color::Greyscale(Greyscale {
        percent: level,
        icc_profile: None,
    })
}

/// Ops that draw `text` with its baseline at (`x`, `y`) millimetres.
fn text_ops(ops: &mut Vec<Op>, font: &FontId, size: f32, x: f32, y: f32, text: String) {
    if text.is_empty() {
        return;
    }
    ops.push(Op::SetFont {
        font: PdfFontHandle::External(font.clone()),
        size: Pt(size),
    });
    ops.push(Op::SetTextMatrix {
        matrix: TextMatrix::Translate(Mm(x).into_pt(), Mm(y).into_pt()),
    });
    ops.push(Op::ShowText {
        items: vec![TextItem::Text(text)],
    });
}

fn rect(ops: &mut Vec<Op>, x: f32, y: f32, w: f32, h: f32, fill: f32) {
    ops.push(Op::SetFillColor { col: grey(fill) });
    ops.push(Op::DrawRectangle {
        rectangle: Rect {
            x: Mm(x).into_pt(),
            y: Mm(y).into_pt(),
            width: Mm(w).into_pt(),
            height: Mm(h).into_pt(),
            mode: Some(PaintMode::Fill),
            winding_order: None,
        },
    });
}

struct Page<'a> {
    metrics: &'a Metrics<'a>,
    font: &'a FontId,
    widths: &'a [f32],
}

impl Page<'_> {
    /// One row of cells whose top edge is at `top`.
    fn row(&self, ops: &mut Vec<Op>, top: f32, height: f32, cells: &[(String, bool)]) {
        let baseline = top - height + (height - BODY_PT * 25.4 / 72.0) / 2.0 + 0.8;
        let mut x = MARGIN;
        for (w, (text, numeric)) in self.widths.iter().zip(cells) {
            let text = self.metrics.fit(text, BODY_PT, w - 2.0 * CELL_PAD);
            let tx = if *numeric {
                x + w - CELL_PAD - self.metrics.width(&text, BODY_PT)
            } else {
                x + CELL_PAD
            };
            text_ops(ops, self.font, BODY_PT, tx, baseline, text);
            x += w;
        }
    }
}

struct Logo {
    id: XObjectId,
    width_px: u32,
    height_px: u32,
}

/// Lays out and encodes the whole document.
pub(super) fn render(
    font: &ParsedFont,
    args: &ReportArgs,
    table: &Table,
    logo: Option<RawImage>,
) -> (Vec<u8>, usize) {
    let mut doc = PdfDocument::new(&args.title);
    let font_id = doc.add_font(font);
    let logo = logo.map(|img| Logo {
        width_px: img.width as u32,
        height_px: img.height as u32,
        id: doc.add_image(&img),
    });
    let metrics = Metrics { font };
    let widths = column_widths(&metrics, table);
    let page = Page {
        metrics: &metrics,
        font: &font_id,
        widths: &widths,
    };
    let header: Vec<(String, bool)> = table.columns.iter().map(|c| (c.clone(), false)).collect();
    let total_pages = page_count(table.rows.len());
    let mut pages = Vec::with_capacity(total_pages);
    let mut rows = table.rows.iter();
    for number in 1..=total_pages {
        let mut ops = Vec::new();
        let (table_top, capacity) = if number == 1 {
            (PAGE_H - MARGIN - TITLE_BAND, FIRST_PAGE_ROWS)
        } else {
            (PAGE_H - MARGIN - RUNNING_BAND, ROWS_PER_PAGE)
        };
        // Backgrounds first (header band, zebra stripes), then all text on top.
        rect(
            &mut ops,
            MARGIN,
            table_top - HEADER_ROW_H,
            TABLE_W,
            HEADER_ROW_H,
            0.85,
        );
        let page_rows: Vec<_> = rows.by_ref().take(capacity).collect();
        let mut top = table_top - HEADER_ROW_H;
        for i in (0..page_rows.len()).filter(|i| i % 2 == 1) {
            rect(
                &mut ops,
                MARGIN,
                top - (i as f32 + 1.0) * ROW_H,
                TABLE_W,
                ROW_H,
                0.95,
            );
        }
        if number == 1
            && let Some(logo) = &logo
        {
            // Fit the logo in its box at the top right; at `dpi`, one pixel is 25.4/dpi mm.
            let scale = (LOGO_MAX_H / logo.height_px as f32).min(LOGO_MAX_W / logo.width_px as f32);
            let (w, h) = (logo.width_px as f32 * scale, logo.height_px as f32 * scale);
            ops.push(Op::UseXobject {
                id: logo.id.clone(),
                transform: XObjectTransform {
                    translate_x: Some(Mm(PAGE_W - MARGIN - w).into_pt()),
                    translate_y: Some(Mm(PAGE_H - MARGIN - h).into_pt()),
                    dpi: Some(25.4 / scale),
                    ..Default::default()
                },
            });
        }
        ops.push(Op::StartTextSection);
        ops.push(Op::SetFillColor { col: grey(0.0) });
        if number == 1 {
            let title = metrics.fit(&args.title, TITLE_PT, TABLE_W - LOGO_MAX_W - 4.0);
            text_ops(
                &mut ops,
                &font_id,
                TITLE_PT,
                MARGIN,
                PAGE_H - MARGIN - 8.0,
                title,
            );
            if let Some(sub) = &args.subtitle {
                let sub = metrics.fit(sub, SUBTITLE_PT, TABLE_W - LOGO_MAX_W - 4.0);
                text_ops(
                    &mut ops,
                    &font_id,
                    SUBTITLE_PT,
                    MARGIN,
                    PAGE_H - MARGIN - 16.0,
                    sub,
                );
            }
        } else {
            let title = metrics.fit(&args.title, SMALL_PT, TABLE_W);
            text_ops(
                &mut ops,
                &font_id,
                SMALL_PT,
                MARGIN,
                PAGE_H - MARGIN - 4.0,
                title,
            );
        }
        page.row(&mut ops, table_top, HEADER_ROW_H, &header);
        for r in page_rows {
            page.row(&mut ops, top, ROW_H, r);
            top -= ROW_H;
        }
        let footer_y = MARGIN;
        if let Some(footer) = &args.footer {
            let footer = metrics.fit(footer, SMALL_PT, TABLE_W - 40.0);
            text_ops(&mut ops, &font_id, SMALL_PT, MARGIN, footer_y, footer);
        }
        let label = format!("Page {number} of {total_pages}");
        let x = PAGE_W - MARGIN - metrics.width(&label, SMALL_PT);
        text_ops(&mut ops, &font_id, SMALL_PT, x, footer_y, label);
        ops.push(Op::EndTextSection);
        pages.push(PdfPage::new(Mm(PAGE_W), Mm(PAGE_H), ops));
    }
    let bytes = doc
        .with_pages(pages)
        .save(&PdfSaveOptions::default(), &mut Vec::new());
    (bytes, total_pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_capacity() {
        assert_eq!(FIRST_PAGE_ROWS, 37);
        assert_eq!(ROWS_PER_PAGE, 40);
        assert_eq!(page_count(0), 1);
        assert_eq!(page_count(37), 1);
        assert_eq!(page_count(38), 2);
        assert_eq!(page_count(77), 2);
        assert_eq!(page_count(78), 3);
    }

    #[test]
    fn what_cannot_be_drawn() {
        let font = ParsedFont::from_bytes(FONT, 0, &mut Vec::new()).expect("font");
        for c in ['a', 'é', '€', 'ß', 'Ж', 'Ω', '…', ' ', '\t'] {
            assert_eq!(cannot_draw(&font, c), None, "{c:?}");
        }
        for c in ['東', 'タ', '한', 'م', 'ש'] {
            assert!(cannot_draw(&font, c).is_some(), "{c:?}");
        }
    }

    #[test]
    fn fit_cuts_with_ellipsis() {
        let font = ParsedFont::from_bytes(FONT, 0, &mut Vec::new()).expect("font");
        let m = Metrics { font: &font };
        let w = m.width("Hello", BODY_PT);
        assert!(w > 5.0 && w < 12.0, "{w}");
        assert!(m.width("€", BODY_PT) > 0.0);
        let cut = m.fit("a rather long piece of text", BODY_PT, 15.0);
        assert!(
            cut.ends_with('…') && m.width(&cut, BODY_PT) <= 15.0,
            "{cut}"
        );
    }
}
