//! `pdf.report`: a 500-row report, read back (page count with lopdf, text with `pdftotext`
//! when installed, else lopdf's extractor), a report from an etl-style SQLite table, logos
//! (transparent, huge) and a symlink planted at the temporary file.

use std::path::Path;
use std::time::Instant;

use hopper_jobs::pdf::{FIRST_PAGE_ROWS, ROWS_PER_PAGE};
use serde_json::{Value, json};

use crate::common::{self, is_permanent, ok, run};

fn rows(n: usize) -> Vec<Value> {
    (1..=n)
        .map(|i| {
            let name = if i == n {
                "Zoë Last-Row".to_owned()
            } else {
                format!("Élodie Müller {i}")
            };
            json!([i, name, i as f64 * 12.5, "ça coûte 12 € — très cher"])
        })
        .collect()
}

/// The text of a PDF: poppler's `pdftotext` when present (an independent reader), else lopdf.
fn pdf_text(path: &Path) -> String {
    if let Ok(out) = std::process::Command::new("pdftotext")
        .arg(path)
        .arg("-")
        .output()
        && out.status.success()
    {
        return String::from_utf8_lossy(&out.stdout).into_owned();
    }
    let doc = lopdf::Document::load(path).expect("pdf loads");
    let pages: Vec<u32> = doc.get_pages().keys().copied().collect();
    doc.extract_text(&pages).expect("text extracts")
}

fn page_count(path: &Path) -> usize {
    lopdf::Document::load(path)
        .expect("pdf loads")
        .get_pages()
        .len()
}

#[tokio::test]
async fn five_hundred_rows_paginate_with_header_and_euro() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = common::config(tmp.path());
    std::fs::create_dir_all(config.files.dir.join("brand")).expect("mkdir");
    image::RgbImage::from_fn(120, 60, |x, _| image::Rgb([x as u8, 80, 160]))
        .save(config.files.dir.join("brand/logo.png"))
        .expect("logo");
    let registry = common::registry(&config);
    let ran = run(
        &registry,
        "pdf.report",
        json!({
            "title": "Rapport trimestriel été 2025",
            "subtitle": "Ventes en € par client",
            "columns": ["id", "client", "montant €", "note"],
            "rows": rows(500),
            "footer": "Confidentiel — usage interne",
            "logo": "brand/logo.png",
            "output": "reports/q3.pdf",
        }),
    )
    .await;
    assert!(!ran.progress.is_empty());
    let result = ok(ran);
    let expected = 1 + (500 - FIRST_PAGE_ROWS).div_ceil(ROWS_PER_PAGE);
    assert_eq!(result["pages"], expected);
    assert_eq!(result["path"], "reports/q3.pdf");
    let path = config.files.dir.join("reports/q3.pdf");
    assert_eq!(page_count(&path), expected);
    let text = pdf_text(&path);
    assert!(
        text.contains("Rapport trimestriel été 2025"),
        "title missing"
    );
    assert!(text.contains("Zoë Last-Row"), "last row missing");
    assert!(text.contains('€'), "euro sign missing");
    assert!(
        text.contains(&format!("Page {expected} of {expected}")),
        "page numbers missing"
    );
    // The header is repeated: "montant €" once per page.
    assert_eq!(
        text.matches("montant €").count(),
        expected,
        "header not on every page"
    );
}

#[tokio::test]
async fn rows_from_an_etl_sqlite_table() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = common::config(tmp.path());
    std::fs::create_dir_all(config.files.dir.join("etl")).expect("mkdir");
    let conn = rusqlite::Connection::open(config.files.dir.join("etl/shop.db")).expect("open");
    conn.execute_batch(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, total REAL);
         INSERT INTO orders VALUES (1, 'Ana', 10.5), (2, 'Bjørn', 20.25), (3, 'Çelik', 7);",
    )
    .expect("seed");
    drop(conn);
    let registry = common::registry(&config);
    let result = ok(run(
        &registry,
        "pdf.report",
        json!({"title": "Orders", "input": {"table": "orders", "database": "sqlite:etl/shop.db", "pages": 1}}),
    )
    .await);
    assert_eq!(result["pages"], 1);
    assert_eq!(result["rows"], 3);
    let text = pdf_text(
        &config
            .files
            .dir
            .join(result["path"].as_str().expect("path")),
    );
    assert!(
        text.contains("Bjørn") && text.contains("customer") && text.contains("20.25"),
        "{text}"
    );

    let missing = run(
        &registry,
        "pdf.report",
        json!({"title": "x", "input": {"table": "nope", "database": "sqlite:etl/shop.db"}}),
    )
    .await;
    assert!(is_permanent(&missing.result), "{:?}", missing.result);
}

/// A logo is held to `[files] max_download_bytes`, sized before it is read: a huge file
/// (1 TiB, sparse) fails the report for good instead of being loaded whole (which failed to
/// allocate, an error retried as if memory might free up).
#[tokio::test]
async fn a_huge_logo_is_refused_unread() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = common::config(tmp.path());
    std::fs::create_dir_all(&config.files.dir).expect("mkdir");
    std::fs::File::create(config.files.dir.join("logo.png"))
        .and_then(|f| f.set_len(1 << 40))
        .expect("sparse file");
    let registry = common::registry(&config);
    let ran = run(
        &registry,
        "pdf.report",
        json!({"title": "t", "columns": ["a"], "rows": [[1]], "logo": "logo.png"}),
    )
    .await;
    let message = common::error_message(&ran.result);
    assert!(is_permanent(&ran.result), "{message}");
    assert!(message.contains("download limit"), "{message}");
}

/// A logo's transparency is kept (a soft mask in the PDF), not stripped: stripping it turned
/// every transparent pixel (stored as transparent black, as most editors do) into a black
/// box on the page.
#[tokio::test]
async fn a_transparent_logo_stays_transparent() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = common::config(tmp.path());
    std::fs::create_dir_all(&config.files.dir).expect("mkdir");
    // Left half transparent black, right half opaque dark blue.
    image::ImageBuffer::from_fn(64, 32, |x, _| {
        if x < 32 {
            image::Rgba([0u8, 0, 0, 0])
        } else {
            image::Rgba([0, 0, 128, 255])
        }
    })
    .save(config.files.dir.join("logo.png"))
    .expect("save");
    let registry = common::registry(&config);
    let result = ok(run(
        &registry,
        "pdf.report",
        json!({"title": "t", "columns": ["a"], "rows": [[1]], "logo": "logo.png", "output": "r.pdf"}),
    )
    .await);
    assert_eq!(result["path"], "r.pdf");
    let doc = lopdf::Document::load(config.files.dir.join("r.pdf")).expect("pdf loads");
    let with_mask: Vec<&lopdf::Stream> = doc
        .objects
        .values()
        .filter_map(|o| o.as_stream().ok())
        .filter(|s| s.dict.get(b"SMask").is_ok())
        .collect();
    assert_eq!(with_mask.len(), 1, "the logo has no soft mask");
    let mask_ref = with_mask[0]
        .dict
        .get(b"SMask")
        .and_then(lopdf::Object::as_reference)
        .expect("SMask reference");
    let mask = doc
        .get_object(mask_ref)
        .and_then(lopdf::Object::as_stream)
        .expect("mask stream");
    let alpha = mask
        .decompressed_content()
        .unwrap_or_else(|_| mask.content.clone());
    assert_eq!(alpha.len(), 64 * 32);
    assert_eq!(alpha[8], 0, "transparent half masked out");
    assert_eq!(alpha[56], 255, "opaque half shown");
}

/// The report is written through a temporary file beside its output; a symlink planted in
/// that temporary file's place (say by another local user sharing the files directory) is
/// replaced, never written through to its target outside the files directory.
#[tokio::test]
async fn the_temporary_file_is_not_written_through_a_symlink() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = common::config(tmp.path());
    let outside = tmp.path().join("outside.txt");
    std::fs::write(&outside, b"precious").expect("write");
    std::fs::create_dir_all(config.files.dir.join("reports")).expect("mkdir");
    std::os::unix::fs::symlink(&outside, config.files.dir.join("reports/q3.pdf.tmp"))
        .expect("link");
    let registry = common::registry(&config);
    let result = ok(run(
        &registry,
        "pdf.report",
        json!({"title": "t", "columns": ["a"], "rows": [[1]], "output": "reports/q3.pdf"}),
    )
    .await);
    assert_eq!(result["path"], "reports/q3.pdf");
    assert!(
        std::fs::read(&outside).expect("read") == b"precious",
        "written through the link"
    );
    assert!(
        std::fs::symlink_metadata(config.files.dir.join("reports/q3.pdf"))
            .is_ok_and(|m| m.file_type().is_file()),
        "the report is a file of its own"
    );
    assert_eq!(page_count(&config.files.dir.join("reports/q3.pdf")), 1);
}

#[tokio::test]
async fn validate_names_the_field() {
    let (_tmp, registry) = common::temp_registry();
    let k = "pdf.report";
    common::assert_valid(
        &registry,
        k,
        &json!({"title": "t", "columns": ["a"], "rows": [[1]]}),
    );
    common::assert_refused(
        &registry,
        k,
        vec![
            (
                json!({"title": "", "columns": ["a"], "rows": []}),
                "payload.title",
            ),
            (
                json!({"title": "t", "columns": [], "rows": []}),
                "payload.columns",
            ),
            (
                json!({"title": "t", "columns": ["a"], "rows": [1]}),
                "payload.rows[0]",
            ),
            (
                json!({"title": "t", "columns": ["a"], "rows": [], "output": "../x.pdf"}),
                "payload.output",
            ),
            (json!({"title": "t", "columns": ["a"]}), "payload.rows"),
        ],
    );
}

/// Pages per second of a 5,000-row report. Run with
/// `cargo test -p hopper-jobs --release --test kinds -- --ignored --nocapture pdf_throughput`.
#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn pdf_throughput() {
    let (_tmp, registry) = common::temp_registry();
    let payload = json!({"title": "Bench €", "columns": ["id", "client", "montant €", "note"], "rows": rows(5000)});
    let started = Instant::now();
    let result = ok(run(&registry, "pdf.report", payload).await);
    let secs = started.elapsed().as_secs_f64();
    let pages = result["pages"].as_f64().unwrap_or(0.0);
    eprintln!(
        "pdf.report: {pages} pages in {:.0} ms, {:.0} pages/s",
        secs * 1e3,
        pages / secs
    );
}

/// Text the embedded font cannot draw used to vanish: CJK came out as empty boxes (the
/// PDF's text read back as U+FFFD), Hebrew and Arabic were drawn left to right, letters
/// reversed and unjoined; the job succeeded either way. Now such text is refused, naming the
/// field and the first character: in the payload (the API's 400, and a permanent failure if
/// it runs), and in a chain input seen only when the job runs.
#[tokio::test]
async fn text_the_font_cannot_draw_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = common::config(tmp.path());
    let registry = common::registry(&config);
    let cases = [
        ("cjk", "Tokyo 東京タワー", '東'),
        ("arabic", "مرحبا بالعالم", 'م'),
        ("hebrew", "שלום עולם", 'ש'),
    ];
    for (name, text, first) in cases {
        let output = format!("{name}.pdf");
        for (payload, field) in [
            (
                json!({"title": "T", "columns": ["id", "name"], "rows": [[1, "Ann"], [2, text]], "output": output}),
                "payload.rows[1]",
            ),
            (
                json!({"title": text, "columns": ["name"], "rows": [["Ann"]], "output": output}),
                "payload.title",
            ),
            (
                json!({"title": "T", "columns": ["id", "name"], "input": {"rows": [[1, text]]}, "output": output}),
                "input.rows[0]",
            ),
        ] {
            let ran = run(&registry, "pdf.report", payload.clone()).await;
            if ran.result.is_ok() {
                let drawn = pdf_text(&config.files.dir.join(&output));
                panic!("{name}: {field}: the report was made; its text reads {drawn:?}");
            }
            let message = common::error_message(&ran.result);
            assert!(is_permanent(&ran.result), "{name}: {message}");
            assert!(
                message.contains(field) && message.contains(&format!("{first:?}")),
                "{name}: {field}: {message}"
            );
            if field.starts_with("payload.") {
                let e = common::validate(&registry, "pdf.report", &payload)
                    .expect_err("refused when enqueued");
                assert_eq!(e.field, field, "{name}: {e}");
                assert!(e.message.contains(first), "{name}: {e}");
            }
        }
    }
    assert!(
        !config.files.dir.join("cjk.pdf").exists(),
        "nothing written"
    );
    // Latin, Greek and Cyrillic are drawn.
    ok(run(
        &registry,
        "pdf.report",
        json!({"title": "Ωmega", "columns": ["name"], "rows": [["Жук Zoë"]]}),
    )
    .await);
}
