//! `pdf.report`: a table as a multi-page A4 PDF. This module owns the payload, where the rows
//! come from, and the page layout: a title block (with an optional logo) on the first page,
//! the table header repeated on every page, a footer and "Page i of N" at the bottom. Text is
//! set in DejaVu Sans, embedded in the file, so accents, `€` and most European scripts
//! render. Layout and encoding run in `spawn_blocking`.
//!
//! Payload:
//!
//! ```json
//! {"title": "Q3 sales", "subtitle": "EMEA", "columns": ["region", "total €"],
//!  "rows": [["Île-de-France", 1234.5], ...], "footer": "Confidential",
//!  "logo": "brand/logo.png", "output": "reports/q3.pdf"}
//! ```
//!
//! Rows come from, in order: `rows` (each an array, or an object read by column name);
//! a chain input's `input.rows`; or a chain input's `input.table` and `input.database`
//! (an `etl.sync` result with a `sqlite:<file>` database: the table is read from that file,
//! all of its columns unless `columns` picks some). Numbers are right-aligned; text too wide
//! for its column is cut with `…`. The default output is `reports/<job id>.pdf`.
//!
//! Result: `{"path", "pages", "rows"}`.

use std::sync::Arc;

use async_trait::async_trait;
use hopper_workers::FieldError;
use hopper_workers::{Handler, JobContext, JobError, JobResult};
use printpdf::{
    Color, FontId, Greyscale, Mm, Op, PaintMode, ParsedFont, PdfDocument, PdfFontHandle, PdfPage,
    PdfSaveOptions, Pt, RawImage, Rect, TextItem, TextMatrix, XObjectId, XObjectTransform,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::decode::decode_limited;
use crate::files::{FilesDir, check_relative, io_error};
use crate::payload::{self, valid_ident};
use crate::{JobsConfig, JobsError};

/// The kind's stable name.
pub const KIND: &str = "pdf.report";

/// DejaVu Sans (Bitstream Vera licence, see `assets/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Reports longer than this are refused: a PDF of 2,500 pages is nobody's report.
pub const MAX_ROWS: usize = 100_000;
/// At most this many columns.
pub const MAX_COLUMNS: usize = 40;

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    title: String,
    subtitle: Option<String>,
    #[serde(default)]
    columns: Vec<String>,
    rows: Option<Vec<Value>>,
    footer: Option<String>,
    logo: Option<String>,
    output: Option<String>,
    #[serde(default)]
    input: Option<Value>,
}

/// `pdf.report`.
#[derive(Debug)]
pub struct Report {
    files: FilesDir,
    font: Arc<ParsedFont>,
    max_pixels: u64,
}

impl Report {
    /// The handler; parses the embedded font once.
    pub fn new(config: &JobsConfig) -> Result<Self, JobsError> {
        let font = ParsedFont::from_bytes(FONT, 0, &mut Vec::new()).ok_or(JobsError::Client {
            what: "report font",
            message: "the embedded DejaVu Sans does not parse".into(),
        })?;
        Ok(Self {
            files: FilesDir::new(&config.files_dir),
            font: Arc::new(font),
            max_pixels: config.image_max_pixels,
        })
    }

    fn parse(&self, payload: &Value) -> Result<Args, FieldError> {
        let args: Args = payload::parse(payload)?;
        if args.title.trim().is_empty() {
            return Err(FieldError::new("payload.title", "must not be empty"));
        }
        if args.columns.len() > MAX_COLUMNS {
            return Err(FieldError::new(
                "payload.columns",
                format!("at most {MAX_COLUMNS} columns"),
            ));
        }
        let from_table =
            args.rows.is_none() && args.input.as_ref().is_some_and(|i| i.get("rows").is_none());
        if args.columns.is_empty() && !from_table {
            return Err(FieldError::new(
                "payload.columns",
                "needs at least one column",
            ));
        }
        if let Some(rows) = &args.rows {
            if rows.len() > MAX_ROWS {
                return Err(FieldError::new(
                    "payload.rows",
                    format!("at most {MAX_ROWS} rows"),
                ));
            }
            for (i, r) in rows.iter().enumerate() {
                if !r.is_array() && !r.is_object() {
                    return Err(FieldError::new(
                        format!("payload.rows[{i}]"),
                        "must be an array of values or an object",
                    ));
                }
            }
        }
        if args.rows.is_none() && args.input.is_none() {
            return Err(FieldError::new(
                "payload.rows",
                "give rows, or run as a chain step whose input has rows or a table",
            ));
        }
        for (field, path) in [
            ("payload.logo", &args.logo),
            ("payload.output", &args.output),
        ] {
            if let Some(p) = path {
                check_relative(p).map_err(|m| FieldError::new(field, m))?;
            }
        }
        Ok(args)
    }
}

/// Rows as display strings, and which cells are numbers (right-aligned).
struct Table {
    columns: Vec<String>,
    rows: Vec<Vec<(String, bool)>>,
}

fn cell(v: &Value) -> (String, bool) {
    let text = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    };
    // Control characters would break the line; the report shows one line per cell.
    let text = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    (text, v.is_number())
}

fn table_from_json(columns: Vec<String>, rows: &[Value], field: &str) -> Result<Table, JobError> {
    if rows.len() > MAX_ROWS {
        return Err(JobError::permanent(format!(
            "{field}: at most {MAX_ROWS} rows"
        )));
    }
    if columns.is_empty() {
        return Err(JobError::permanent(
            "invalid payload: payload.columns: needs at least one column",
        ));
    }
    let rows = rows
        .iter()
        .enumerate()
        .map(|(i, r)| match r {
            Value::Array(cells) => Ok(columns
                .iter()
                .enumerate()
                .map(|(j, _)| cells.get(j).map_or((String::new(), false), cell))
                .collect()),
            Value::Object(map) => Ok(columns
                .iter()
                .map(|c| map.get(c).map_or((String::new(), false), cell))
                .collect()),
            _ => Err(JobError::permanent(format!(
                "{field}[{i}]: must be an array of values or an object"
            ))),
        })
        .collect::<Result<_, _>>()?;
    Ok(Table { columns, rows })
}

/// Reads `table` from the SQLite file of an `etl.sync` result.
fn table_from_sqlite(
    files: &FilesDir,
    database: &str,
    table: &str,
    columns: Vec<String>,
) -> Result<Table, JobError> {
    let rel = database.strip_prefix("sqlite:").ok_or_else(|| {
        JobError::permanent(format!(
            "input.database {database:?}: only sqlite:<file> databases can be read by a report"
        ))
    })?;
    if !valid_ident(table) {
        return Err(JobError::permanent(format!(
            "input.table {table:?}: not a valid table name"
        )));
    }
    let path = files.existing(rel)?;
    let conn = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| JobError::permanent(format!("{database}: {e}")))?;
    let sql_err =
        |e: rusqlite::Error| JobError::permanent(format!("{database} table {table}: {e}"));
    let columns = if columns.is_empty() {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT name FROM pragma_table_info('{table}') ORDER BY cid"
            ))
            .map_err(sql_err)?;
        let names = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(sql_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql_err)?;
        if names.is_empty() {
            return Err(JobError::permanent(format!(
                "{database}: no table {table:?}"
            )));
        }
        names
    } else {
        if let Some(bad) = columns.iter().find(|c| !valid_ident(c)) {
            return Err(JobError::permanent(format!(
                "invalid payload: payload.columns: {bad:?} is not a column name"
            )));
        }
        columns
    };
    let list = columns
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {list} FROM \"{table}\" ORDER BY rowid LIMIT {}",
            MAX_ROWS + 1
        ))
        .map_err(sql_err)?;
    let n = columns.len();
    let rows = stmt
        .query_map([], |r| {
            (0..n)
                .map(|i| {
                    use rusqlite::types::ValueRef;
                    Ok(match r.get_ref(i)? {
                        ValueRef::Null => (String::new(), false),
                        ValueRef::Integer(v) => (v.to_string(), true),
                        ValueRef::Real(v) => (v.to_string(), true),
                        ValueRef::Text(t) => {
                            cell(&Value::String(String::from_utf8_lossy(t).into_owned()))
                        }
                        ValueRef::Blob(b) => (format!("<{} bytes>", b.len()), false),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(sql_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql_err)?;
    if rows.len() > MAX_ROWS {
        return Err(JobError::permanent(format!(
            "{database} table {table}: over {MAX_ROWS} rows"
        )));
    }
    Ok(Table { columns, rows })
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
fn render(
    font: &ParsedFont,
    args: &Args,
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

#[async_trait]
impl Handler for Report {
    async fn run(&self, cx: JobContext) -> JobResult {
        let args = self.parse(cx.payload()).map_err(payload::permanent)?;
        let files = self.files.clone();
        let font = Arc::clone(&self.font);
        let max_pixels = self.max_pixels;
        let output = args
            .output
            .clone()
            .unwrap_or_else(|| format!("reports/{}.pdf", cx.job().id));
        let cx2 = cx.clone();
        tokio::task::spawn_blocking(move || {
            let table = load_table(&files, &args)?;
            cx2.progress(20, Some(format!("{} rows loaded", table.rows.len())));
            let logo = match &args.logo {
                Some(rel) => {
                    let path = files.existing(rel)?;
                    let bytes =
                        std::fs::read(&path).map_err(|e| io_error(&format!("logo {rel:?}"), &e))?;
                    let img = decode_limited(&bytes, max_pixels, "logo")?;
                    Some(
                        RawImage::from_dynamic_image(::image::DynamicImage::ImageRgb8(
                            img.into_rgb8(),
                        ))
                        .map_err(|e| JobError::permanent(format!("logo: {e}")))?,
                    )
                }
                None => None,
            };
            if cx2.is_cancelled() {
                return Err(JobError::retryable("cancelled before rendering"));
            }
            let (bytes, pages) = render(&font, &args, &table, logo);
            cx2.progress(90, Some(format!("{pages} pages rendered")));
            let path = files.output(&output)?;
            let tmp = path.with_extension("pdf.tmp");
            std::fs::write(&tmp, &bytes)
                .map_err(|e| io_error(&format!("output {output:?}"), &e))?;
            std::fs::rename(&tmp, &path)
                .map_err(|e| io_error(&format!("output {output:?}"), &e))?;
            Ok(json!({ "path": files.relative(&path), "pages": pages, "rows": table.rows.len() }))
        })
        .await
        .map_err(|e| JobError::retryable(format!("report task failed: {e}")))?
    }

    fn validate(&self, payload: &Value) -> Result<(), FieldError> {
        self.parse(payload).map(|_| ())
    }
}

/// The rows, from wherever the payload says (see the module docs for the order).
fn load_table(files: &FilesDir, args: &Args) -> Result<Table, JobError> {
    if let Some(rows) = &args.rows {
        return table_from_json(args.columns.clone(), rows, "payload.rows");
    }
    let input = args
        .input
        .as_ref()
        .ok_or_else(|| JobError::permanent("invalid payload: no rows"))?;
    if let Some(rows) = input.get("rows") {
        let rows = rows
            .as_array()
            .ok_or_else(|| JobError::permanent("input.rows: must be an array"))?;
        return table_from_json(args.columns.clone(), rows, "input.rows");
    }
    match (
        input.get("table").and_then(Value::as_str),
        input.get("database").and_then(Value::as_str),
    ) {
        (Some(table), Some(database)) => {
            table_from_sqlite(files, database, table, args.columns.clone())
        }
        _ => Err(JobError::permanent(
            "input has neither rows nor a table and database to read them from",
        )),
    }
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
