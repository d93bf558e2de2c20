//! `pdf.report`: a table as a multi-page A4 PDF. This module owns the payload, where the rows
//! come from, and the page layout: a title block (with an optional logo) on the first page,
//! the table header repeated on every page, a footer and "Page i of N" at the bottom. Text is
//! set in DejaVu Sans, embedded in the file, so accents, `€` and most European scripts
//! render. Layout and encoding run in `spawn_blocking`. Text the font cannot draw (CJK and
//! other scripts it has no glyphs for) or draws wrongly (right-to-left scripts: Hebrew,
//! Arabic) is refused, naming the field and the first such character, rather than printed
//! as empty boxes or backwards: in the payload when it is checked (a 400 from the API), in a
//! chain input or an `etl.sync` table when the job runs (a permanent failure).
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
//! for its column is cut with `…`. The default output is `reports/<job id>.pdf`. The logo, a
//! file under the files directory, is held to `[files] max_download_bytes` and
//! `image_max_pixels`.
//!
//! Result: `{"path", "pages", "rows"}`.
//!
//! [`Report`] is a [`Kind`]: its payload is [`ReportArgs`], the limits and paths are its
//! `check`. Layout: `table` (where the rows come from), `layout` (the font, the page
//! geometry and drawing); this file holds the payload, the kind and its run.

use std::sync::Arc;

use hopper_workers::FieldError;
use hopper_workers::{JobContext, JobError, JobResult, Kind};
use printpdf::{ParsedFont, RawImage};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::decode::decode_limited;
use crate::files::{FilesDir, check_relative, io_error, read_capped};
use crate::{JobsConfig, JobsError};

mod layout;
mod table;

pub use layout::{FIRST_PAGE_ROWS, ROWS_PER_PAGE, page_count};
use layout::{FONT, cannot_draw, render};
use table::{Table, table_from_json, table_from_sqlite};

/// Reports longer than this are refused: a PDF of 2,500 pages is nobody's report.
pub const MAX_ROWS: usize = 100_000;
/// At most this many columns.
pub const MAX_COLUMNS: usize = 40;

/// The payload of `pdf.report` (see the module docs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportArgs {
    title: String,
    subtitle: Option<String>,
    #[serde(default)]
    columns: Vec<String>,
    rows: Option<Vec<Value>>,
    footer: Option<String>,
    logo: Option<String>,
    output: Option<String>,
    /// A chain predecessor's result: where the rows come from when `rows` is not given.
    #[serde(default)]
    input: Option<PrevTable>,
}

/// The part of a chain predecessor's result `pdf.report` reads: its `rows`, or the `table`
/// and `database` it wrote (an `etl.sync` result).
#[derive(Debug, Deserialize)]
struct PrevTable {
    rows: Option<Vec<Value>>,
    table: Option<String>,
    database: Option<String>,
}

/// `pdf.report`.
#[derive(Debug)]
pub struct Report {
    files: FilesDir,
    font: Arc<ParsedFont>,
    max_pixels: u64,
    /// `[files] max_download_bytes`: the largest logo file read.
    max_logo_bytes: u64,
}

impl Report {
    /// The handler; parses the embedded font once.
    pub fn new(config: &JobsConfig) -> Result<Self, JobsError> {
        let font = ParsedFont::from_bytes(FONT, 0, &mut Vec::new()).ok_or(JobsError::Client {
            what: "report font",
            message: "the embedded DejaVu Sans does not parse".into(),
        })?;
        Ok(Self {
            files: FilesDir::new(&config.files.dir),
            font: Arc::new(font),
            max_pixels: config.files.image_max_pixels,
            max_logo_bytes: config.files.max_download_bytes,
        })
    }
}

impl Kind for Report {
    const NAME: &'static str = "pdf.report";
    type Args = ReportArgs;

    async fn run(&self, cx: JobContext, args: ReportArgs) -> JobResult {
        let files = self.files.clone();
        let font = Arc::clone(&self.font);
        let max_pixels = self.max_pixels;
        let max_bytes = self.max_logo_bytes;
        let output = args
            .output
            .clone()
            .unwrap_or_else(|| format!("reports/{}.pdf", cx.job().id));
        let cx2 = cx.clone();
        tokio::task::spawn_blocking(move || {
            let table = load_table(&files, &args)?;
            // The payload's own text was checked before the run; rows from a chain input or
            // a database are seen only now.
            check_table(&font, &table, rows_field(&args))
                .map_err(|e| JobError::permanent(format!("{}: {}", e.field, e.message)))?;
            cx2.progress(20, Some(format!("{} rows loaded", table.rows.len())));
            let logo = match &args.logo {
                Some(rel) => {
                    let path = files.existing(rel)?;
                    let what = format!("logo {rel:?}");
                    let bytes = read_capped(&path, &what, max_bytes, || {
                        JobError::permanent(format!(
                            "{what}: over the {max_bytes}-byte download limit"
                        ))
                    })?;
                    let img = decode_limited(&bytes, max_pixels, "logo")?;
                    // 8-bit RGB, or RGBA when the logo has transparency: the PDF keeps it as
                    // a soft mask rather than painting transparent pixels (often transparent
                    // black) as they are stored.
                    let img = if img.color().has_alpha() {
                        ::image::DynamicImage::ImageRgba8(img.into_rgba8())
                    } else {
                        ::image::DynamicImage::ImageRgb8(img.into_rgb8())
                    };
                    Some(
                        RawImage::from_dynamic_image(img)
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
            write_new(&tmp, &bytes).map_err(|e| io_error(&format!("output {output:?}"), &e))?;
            std::fs::rename(&tmp, &path)
                .map_err(|e| io_error(&format!("output {output:?}"), &e))?;
            Ok(json!({ "path": files.relative(&path), "pages": pages, "rows": table.rows.len() }))
        })
        .await
        .map_err(|e| JobError::retryable(format!("report task failed: {e}")))?
    }

    /// The rules serde cannot express: a title, columns and rows within limits (or a chain
    /// input to read them from), paths under the files directory.
    fn check(&self, args: &ReportArgs) -> Result<(), FieldError> {
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
            args.rows.is_none() && args.input.as_ref().is_some_and(|i| i.rows.is_none());
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
        for (field, text) in [
            ("payload.title", Some(&args.title)),
            ("payload.subtitle", args.subtitle.as_ref()),
            ("payload.footer", args.footer.as_ref()),
        ] {
            check_text(&self.font, field, text.map_or("", String::as_str))?;
        }
        for (i, column) in args.columns.iter().enumerate() {
            check_text(&self.font, &format!("payload.columns[{i}]"), column)?;
        }
        if let Some(rows) = &args.rows
            && let Ok(table) = table_from_json(args.columns.clone(), rows, "payload.rows")
        {
            check_table(&self.font, &table, "payload.rows")?;
        }
        for (field, path) in [
            ("payload.logo", &args.logo),
            ("payload.output", &args.output),
        ] {
            if let Some(p) = path {
                check_relative(p).map_err(|m| FieldError::new(field, m))?;
            }
        }
        Ok(())
    }
}

/// Why `text` cannot be drawn, naming its first character the report cannot draw; `None`
/// when all of it can.
fn undrawable(font: &ParsedFont, text: &str) -> Option<String> {
    let (c, why) = text
        .chars()
        .find_map(|c| cannot_draw(font, c).map(|why| (c, why)))?;
    Some(format!(
        "{c:?} (U+{:04X}) cannot be drawn: {why}",
        u32::from(c)
    ))
}

/// Refuses `text`, the value of `field`, if it holds a character the report cannot draw.
fn check_text(font: &ParsedFont, field: &str, text: &str) -> Result<(), FieldError> {
    match undrawable(font, text) {
        Some(message) => Err(FieldError::new(field, message)),
        None => Ok(()),
    }
}

/// [`check_text`] on every column name and cell of `table`, whose rows came from `field`: a
/// cell is named by its row, `field[i]`, and its column in the message.
fn check_table(font: &ParsedFont, table: &Table, field: &str) -> Result<(), FieldError> {
    for (j, column) in table.columns.iter().enumerate() {
        if let Some(why) = undrawable(font, column) {
            return Err(FieldError::new(field, format!("column {j}'s name: {why}")));
        }
    }
    for (i, row) in table.rows.iter().enumerate() {
        for ((text, _), column) in row.iter().zip(&table.columns) {
            if let Some(why) = undrawable(font, text) {
                return Err(FieldError::new(
                    format!("{field}[{i}]"),
                    format!("column {column:?}: {why}"),
                ));
            }
        }
    }
    Ok(())
}

/// Where [`load_table`] takes the rows from, as a field name for errors.
fn rows_field(args: &ReportArgs) -> &'static str {
    match (&args.rows, &args.input) {
        (Some(_), _) => "payload.rows",
        (None, Some(PrevTable { rows: Some(_), .. })) => "input.rows",
        _ => "input.table",
    }
}

/// Writes `bytes` to a new file at `path`, replacing whatever is there (a leftover of a failed
/// try, or a symlink planted in its place) rather than writing through it: `create_new`
/// refuses to follow a symlink that appears in between.
fn write_new(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?
        .write_all(bytes)
}

/// The rows, from wherever the payload says (see the module docs for the order).
fn load_table(files: &FilesDir, args: &ReportArgs) -> Result<Table, JobError> {
    if let Some(rows) = &args.rows {
        return table_from_json(args.columns.clone(), rows, "payload.rows");
    }
    let input = args
        .input
        .as_ref()
        .ok_or_else(|| JobError::permanent("invalid payload: no rows"))?;
    if let Some(rows) = &input.rows {
        return table_from_json(args.columns.clone(), rows, "input.rows");
    }
    match (&input.table, &input.database) {
        (Some(table), Some(database)) => {
            table_from_sqlite(files, database, table, args.columns.clone())
        }
        _ => Err(JobError::permanent(
            "input has neither rows nor a table and database to read them from",
        )),
    }
}
