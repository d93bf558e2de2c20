//! `image.resize` on generated images (transparent, EXIF-rotated), a crafted oversized header,
//! a huge source file, outputs over the pixel limit, and a URL source.

use std::io::Cursor;
use std::time::Instant;

use hopper_jobs::JobsConfig;
use image::codecs::jpeg::JpegEncoder;
use image::{ImageBuffer, ImageEncoder, Rgb};
use serde_json::json;

use crate::common::{self, is_permanent, ok, run};

/// A 4000x3000 JPEG with enough detail to be a fair decode and resize workload.
fn photo_jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = ImageBuffer::from_fn(w, h, |x, y| {
        Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 251) as u8])
    });
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(Cursor::new(&mut out), 85)
        .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
        .expect("encode");
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose header claims `w` x `h` pixels, with a valid IHDR checksum and a token IDAT.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    out
}

/// A config over a fresh temporary directory (the guard) whose `uploads/name` holds `bytes`.
fn with_upload(name: &str, bytes: &[u8]) -> (tempfile::TempDir, JobsConfig) {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = common::config(tmp.path());
    std::fs::create_dir_all(config.files.dir.join("uploads")).expect("mkdir");
    std::fs::write(config.files.dir.join("uploads").join(name), bytes).expect("write");
    (tmp, config)
}

#[tokio::test]
async fn resizes_a_photo_to_three_sizes() {
    let (_tmp, config) = with_upload("photo.jpg", &photo_jpeg(4000, 3000));
    let registry = common::registry(&config);
    let ran = run(
        &registry,
        "image.resize",
        json!({
            "source": "uploads/photo.jpg",
            "sizes": [
                {"width": 1600},
                {"width": 400, "height": 400, "fit": "cover"},
                {"width": 120, "height": 90, "fit": "exact"},
            ],
            "quality": 80,
        }),
    )
    .await;
    assert!(
        ran.progress.len() >= 3,
        "progress per output: {:?}",
        ran.progress
    );
    let result = ok(ran);
    let outputs = result["outputs"].as_array().expect("outputs");
    let expected = [(1600, 1200), (400, 400), (120, 90)];
    assert_eq!(outputs.len(), 3);
    for (out, (w, h)) in outputs.iter().zip(expected) {
        assert_eq!(
            (out["width"].as_u64(), out["height"].as_u64()),
            (Some(w), Some(h))
        );
        let path = config.files.dir.join(out["path"].as_str().expect("path"));
        assert!(
            path.starts_with(config.files.dir.join("resized")),
            "{path:?}"
        );
        let bytes = std::fs::read(&path).expect("output written");
        assert_eq!(out["bytes"].as_u64(), Some(bytes.len() as u64));
        let img = image::load_from_memory(&bytes).expect("output decodes");
        assert_eq!((img.width(), img.height()), (w as u32, h as u32));
    }
}

/// Two jobs of the same source and sizes, run at once, each keep their own output: the
/// paths differ, and each file is the one its job wrote (its byte count, its quality).
#[tokio::test]
async fn concurrent_jobs_do_not_overwrite_each_other() {
    let (_tmp, config) = with_upload("big.jpg", &photo_jpeg(800, 600));
    let registry = common::registry(&config);
    let payload = |quality: u8| {
        json!({"source": "uploads/big.jpg", "sizes": [{"width": 400}, {"width": 40, "height": 40, "fit": "cover"}],
               "quality": quality})
    };
    let (a, b) = tokio::join!(
        run(&registry, "image.resize", payload(10)),
        run(&registry, "image.resize", payload(95)),
    );
    let (a, b) = (ok(a), ok(b));
    let mut paths = std::collections::HashSet::new();
    for result in [&a, &b] {
        let outputs = result["outputs"].as_array().expect("outputs");
        for (out, (w, h)) in outputs.iter().zip([(400, 300), (40, 40)]) {
            let rel = out["path"].as_str().expect("path");
            assert!(paths.insert(rel.to_owned()), "two jobs wrote {rel}");
            let bytes = std::fs::read(config.files.dir.join(rel)).expect("output exists");
            assert_eq!(
                out["bytes"].as_u64(),
                Some(bytes.len() as u64),
                "{rel} is not the file its job wrote"
            );
            let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
                .expect("a JPEG");
            assert_eq!((img.width(), img.height()), (w, h), "{rel}");
        }
    }
    assert_eq!(paths.len(), 4);
}

#[tokio::test]
async fn png_and_webp_keep_alpha() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = common::config(tmp.path());
    let img = ImageBuffer::from_fn(64, 32, |x, _| image::Rgba([200, 10, 10, (x * 4) as u8]));
    std::fs::create_dir_all(&config.files.dir).expect("mkdir");
    img.save(config.files.dir.join("a.png")).expect("save");
    let registry = common::registry(&config);
    for format in ["png", "webp"] {
        let result = ok(run(
            &registry,
            "image.resize",
            json!({"source": "a.png", "sizes": [{"width": 16, "height": 16}], "format": format, "output_dir": "out"}),
        )
        .await);
        let out = &result["outputs"][0];
        assert_eq!(
            (out["width"].as_u64(), out["height"].as_u64()),
            (Some(16), Some(8))
        );
        let decoded = image::open(config.files.dir.join(out["path"].as_str().expect("path")))
            .expect("decodes");
        assert!(decoded.color().has_alpha(), "{format} lost alpha");
    }
}

#[tokio::test]
async fn oversized_header_is_permanent() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = common::config(tmp.path());
    std::fs::create_dir_all(&config.files.dir).expect("mkdir");
    std::fs::write(
        config.files.dir.join("bomb.png"),
        png_claiming(100_000, 100_000),
    )
    .expect("write");
    std::fs::write(config.files.dir.join("junk.jpg"), b"not an image at all").expect("write");
    let registry = common::registry(&config);
    let started = Instant::now();
    for source in ["bomb.png", "junk.jpg", "missing.jpg"] {
        let ran = run(
            &registry,
            "image.resize",
            json!({"source": source, "sizes": [{"width": 100}]}),
        )
        .await;
        assert!(is_permanent(&ran.result), "{source}: {:?}", ran.result);
    }
    assert!(
        started.elapsed().as_secs() < 5,
        "the bomb was not refused from its header"
    );
}

#[tokio::test]
async fn url_sources_and_their_errors() {
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::get;

    let jpeg = photo_jpeg(64, 48);
    let app = Router::new()
        .route("/cat.jpg", get(move || async move { jpeg.clone() }))
        .route(
            "/busy.jpg",
            get(|| async { StatusCode::SERVICE_UNAVAILABLE }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = common::config(tmp.path());
    config.files.max_download_bytes = 1_000_000;
    let registry = common::registry(&config);
    let result = ok(run(
        &registry,
        "image.resize",
        json!({"source": format!("{base}/cat.jpg"), "sizes": [{"width": 32}]}),
    )
    .await);
    let path = result["outputs"][0]["path"].as_str().expect("path");
    assert!(
        path.starts_with("resized/")
            && path.ends_with("/cat_32x24.jpg")
            && path.split('/').count() == 3,
        "{path}"
    );

    let missing = run(
        &registry,
        "image.resize",
        json!({"source": format!("{base}/nope.jpg"), "sizes": [{"width": 32}]}),
    )
    .await;
    assert!(is_permanent(&missing.result), "404: {:?}", missing.result);
    let busy = run(
        &registry,
        "image.resize",
        json!({"source": format!("{base}/busy.jpg"), "sizes": [{"width": 32}]}),
    )
    .await;
    assert!(common::is_retryable(&busy.result), "503: {:?}", busy.result);

    config.files.max_download_bytes = 100;
    let registry = common::registry(&config);
    let big = run(
        &registry,
        "image.resize",
        json!({"source": format!("{base}/cat.jpg"), "sizes": [{"width": 32}]}),
    )
    .await;
    assert!(
        is_permanent(&big.result),
        "over the limit: {:?}",
        big.result
    );
}

#[tokio::test]
async fn validate_names_the_field() {
    let (_tmp, registry) = common::temp_registry();
    let k = "image.resize";
    common::assert_valid(
        &registry,
        k,
        &json!({"source": "a.jpg", "sizes": [{"width": 10}]}),
    );
    common::assert_refused(
        &registry,
        k,
        vec![
            (
                json!({"source": "a.jpg", "sizes": [{"width": "x"}]}),
                "payload.sizes[0].width",
            ),
            (
                json!({"source": "a.jpg", "sizes": [{"width": 10}, {"width": 0}]}),
                "payload.sizes[1].width",
            ),
            (
                json!({"source": "a.jpg", "sizes": [{"width": 10, "fit": "cover"}]}),
                "payload.sizes[0].height",
            ),
            (
                json!({"source": "/etc/passwd", "sizes": [{"width": 10}]}),
                "payload.source",
            ),
            (
                json!({"source": "a.jpg", "sizes": [{"width": 10}], "quality": 0}),
                "payload.quality",
            ),
            (
                json!({"source": "a.jpg", "sizes": [{"width": 10}], "format": "gif"}),
                "payload.format",
            ),
            (json!({"source": "a.jpg", "sizes": []}), "payload.sizes"),
        ],
    );
}

/// An output is held to `[files] image_max_pixels` like a source: a 1x1 image blown up to
/// 16384x16384 is a gigabyte of pixels and a minute of CPU per size, from a 70-byte upload.
/// A box over the limit is refused before anything is enqueued; a width-only size whose
/// height follows from the source is refused when the source is known, before allocating.
#[tokio::test]
async fn outputs_are_held_to_the_pixel_limit() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = common::config(tmp.path());
    config.files.image_max_pixels = 1_000_000;
    std::fs::create_dir_all(&config.files.dir).expect("mkdir");
    ImageBuffer::from_fn(1, 100, |_, _| Rgb([1u8, 2, 3]))
        .save(config.files.dir.join("thin.png"))
        .expect("save");
    let registry = common::registry(&config);
    let k = "image.resize";
    for fit in ["exact", "cover", "contain"] {
        let e = common::validate(
            &registry,
            k,
            &json!({"source": "thin.png", "sizes": [{"width": 10}, {"width": 2000, "height": 2000, "fit": fit}]}),
        )
        .expect_err(fit);
        assert_eq!(e.field, "payload.sizes[1]", "{fit}");
        assert!(e.message.contains("image_max_pixels"), "{e}");
    }
    common::assert_valid(
        &registry,
        k,
        &json!({"source": "thin.png", "sizes": [{"width": 1000, "height": 1000, "fit": "exact"}]}),
    );

    // 1x100 to a width of 2000: 2000 x 16384 (the side limit), 32 million pixels.
    let started = Instant::now();
    let ran = run(
        &registry,
        k,
        json!({"source": "thin.png", "sizes": [{"width": 2000}], "format": "png"}),
    )
    .await;
    let message = common::error_message(&ran.result);
    assert!(is_permanent(&ran.result), "{message}");
    assert!(message.contains("2000x16384"), "{message}");
    assert!(started.elapsed().as_secs() < 2, "{:?}", started.elapsed());
    assert!(
        !config.files.dir.join("resized").exists(),
        "nothing written"
    );
}

/// A source file is held to `[files] max_download_bytes` like a URL source, sized before it
/// is read: a huge file (here 1 TiB, sparse) dropped where an image was expected fails the
/// job for good instead of being loaded whole (which failed to allocate, an error retried as
/// if memory might free up).
#[tokio::test]
async fn a_huge_source_file_is_refused_unread() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = common::config(tmp.path());
    std::fs::create_dir_all(&config.files.dir).expect("mkdir");
    std::fs::File::create(config.files.dir.join("huge.jpg"))
        .and_then(|f| f.set_len(1 << 40))
        .expect("sparse file");
    let registry = common::registry(&config);
    let ran = run(
        &registry,
        "image.resize",
        json!({"source": "huge.jpg", "sizes": [{"width": 10}]}),
    )
    .await;
    let message = common::error_message(&ran.result);
    assert!(is_permanent(&ran.result), "{message}");
    assert!(message.contains("download limit"), "{message}");
}

/// `jpeg` with an EXIF APP1 segment saying `orientation` (1 to 8) inserted after its SOI.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec(); // big-endian, IFD at offset 8
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // one value
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]); // padding of the value field
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec(); // SOI
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&u16::try_from(app1.len() + 2).expect("short").to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A phone photo is stored sideways with an EXIF orientation saying how to show it; outputs
/// are turned upright (the orientation applied), not left sideways with the aspect swapped.
#[tokio::test]
async fn exif_orientation_is_applied() {
    // 200x100 stored: left half red, right half blue. Orientation 6 (turn 90 degrees
    // clockwise to show): shown 100x200, red on top, blue below.
    let stored = ImageBuffer::from_fn(200, 100, |x, _| {
        if x < 100 {
            Rgb([255u8, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(Cursor::new(&mut jpeg), 95)
        .write_image(stored.as_raw(), 200, 100, image::ExtendedColorType::Rgb8)
        .expect("encode");
    let (_tmp, config) = with_upload("phone.jpg", &with_exif_orientation(&jpeg, 6));
    let registry = common::registry(&config);
    let result = ok(run(
        &registry,
        "image.resize",
        json!({"source": "uploads/phone.jpg", "sizes": [{"width": 50}], "format": "png"}),
    )
    .await);
    let out = &result["outputs"][0];
    assert_eq!(
        (out["width"].as_u64(), out["height"].as_u64()),
        (Some(50), Some(100)),
        "{result}"
    );
    let img = image::open(config.files.dir.join(out["path"].as_str().expect("path")))
        .expect("decodes")
        .into_rgb8();
    let (top, bottom) = (img.get_pixel(25, 10), img.get_pixel(25, 90));
    assert!(top[0] > 200 && top[2] < 60, "top {top:?}");
    assert!(bottom[2] > 200 && bottom[0] < 60, "bottom {bottom:?}");
}

/// JPEG has no alpha: a transparent source (a logo on nothing) is laid on white, as a viewer
/// shows it, not stripped of its alpha, which turned every transparent pixel (stored as
/// transparent black, as most editors do) black.
#[tokio::test]
async fn jpeg_of_a_transparent_image_is_on_white() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = common::config(tmp.path());
    std::fs::create_dir_all(&config.files.dir).expect("mkdir");
    // Left half transparent black, right half opaque red.
    ImageBuffer::from_fn(64, 32, |x, _| {
        if x < 32 {
            image::Rgba([0u8, 0, 0, 0])
        } else {
            image::Rgba([255, 0, 0, 255])
        }
    })
    .save(config.files.dir.join("logo.png"))
    .expect("save");
    let registry = common::registry(&config);
    let result = ok(run(
        &registry,
        "image.resize",
        json!({"source": "logo.png", "sizes": [{"width": 64}], "format": "jpeg", "quality": 95}),
    )
    .await);
    let path = config
        .files
        .dir
        .join(result["outputs"][0]["path"].as_str().expect("path"));
    let img = image::open(path).expect("decodes").into_rgb8();
    let (clear, red) = (img.get_pixel(8, 16), img.get_pixel(56, 16));
    assert!(
        clear.0.iter().all(|&c| c > 240),
        "transparent became {clear:?}"
    );
    assert!(
        red[0] > 220 && red[1] < 40 && red[2] < 40,
        "red became {red:?}"
    );
}

/// Throughput of the whole handler (decode, 3 resizes, encode, write), and of the image
/// crate's own Lanczos3 resize for comparison. Run with
/// `cargo test -p hopper-jobs --release --test kinds -- --ignored --nocapture resize_throughput`.
#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn resize_throughput() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = common::config(tmp.path());
    std::fs::create_dir_all(&config.files.dir).expect("mkdir");
    let jpeg = photo_jpeg(4000, 3000);
    std::fs::write(config.files.dir.join("photo.jpg"), &jpeg).expect("write");
    let registry = common::registry(&config);
    let payload = json!({"source": "photo.jpg", "sizes": [
        {"width": 1600}, {"width": 400, "height": 400, "fit": "cover"}, {"width": 120, "height": 90, "fit": "exact"}]});
    let n = 10;
    let started = Instant::now();
    for _ in 0..n {
        ok(run(&registry, "image.resize", payload.clone()).await);
    }
    let per = started.elapsed().as_secs_f64() / f64::from(n);
    eprintln!(
        "image.resize 4000x3000 -> 3 sizes: {:.1} ms/image, {:.2} images/s",
        per * 1e3,
        1.0 / per
    );

    let img = image::load_from_memory(&jpeg).expect("decode");
    let started = Instant::now();
    let decoded = image::load_from_memory(&jpeg).expect("decode");
    let decode = started.elapsed().as_secs_f64();
    drop(decoded);
    let sizes = [(1600, 1200), (400, 400), (120, 90)];
    let started = Instant::now();
    for (w, h) in sizes {
        let _ = img.resize_exact(w, h, image::imageops::FilterType::Lanczos3);
    }
    let image_crate = started.elapsed().as_secs_f64();
    let rgb = img.to_rgb8();
    let src = fast_image_resize::images::Image::from_vec_u8(
        4000,
        3000,
        rgb.into_raw(),
        fast_image_resize::PixelType::U8x3,
    )
    .expect("buffer");
    let mut resizer = fast_image_resize::Resizer::new();
    let started = Instant::now();
    for (w, h) in sizes {
        let mut dst =
            fast_image_resize::images::Image::new(w, h, fast_image_resize::PixelType::U8x3);
        resizer.resize(&src, &mut dst, None).expect("resize");
    }
    let fir = started.elapsed().as_secs_f64();
    eprintln!(
        "decode {:.1} ms; Lanczos3 resize to the 3 sizes: image crate {:.1} ms, fast_image_resize {:.1} ms ({:?})",
        decode * 1e3,
        image_crate * 1e3,
        fir * 1e3,
        resizer.cpu_extensions(),
    );
}

/// An upload cut short (a dropped connection, a full disk) is a truncated file. The JPEG
/// decoder fills what is missing with grey and reports success, so the job used to succeed
/// and write damaged outputs (a PNG cut short already failed, as "unexpected end of file").
/// Both fail for good (the same bytes fail the same way), saying the source is truncated,
/// and write nothing.
#[tokio::test]
async fn a_truncated_source_fails_for_good() {
    let jpeg = photo_jpeg(640, 480);
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(Cursor::new(&mut png))
        .write_image(
            ImageBuffer::from_fn(640, 480, |x, y| Rgb([(x % 256) as u8, (y % 256) as u8, 7]))
                .as_raw(),
            640,
            480,
            image::ExtendedColorType::Rgb8,
        )
        .expect("encode");
    // The whole files decode: the cut is what breaks them.
    image::load_from_memory(&jpeg).expect("the whole JPEG decodes");
    image::load_from_memory(&png).expect("the whole PNG decodes");
    let tmp = tempfile::tempdir().expect("tmp");
    let config = common::config(tmp.path());
    std::fs::create_dir_all(&config.files.dir).expect("mkdir");
    std::fs::write(config.files.dir.join("half.jpg"), &jpeg[..jpeg.len() / 2]).expect("write");
    std::fs::write(config.files.dir.join("half.png"), &png[..png.len() / 2]).expect("write");
    let registry = common::registry(&config);
    for source in ["half.jpg", "half.png"] {
        let ran = run(
            &registry,
            "image.resize",
            json!({"source": source, "sizes": [{"width": 320}], "format": "png"}),
        )
        .await;
        if let Ok(result) = &ran.result {
            // Say what was written: a grey lower half shows the damage.
            let out = config
                .files
                .dir
                .join(result["outputs"][0]["path"].as_str().unwrap_or_default());
            let img = image::open(&out).expect("output decodes").into_rgb8();
            let bottom = img.get_pixel(160, img.height() - 1);
            panic!("{source}: the job succeeded, bottom pixel {bottom:?}: {result}");
        }
        let message = common::error_message(&ran.result);
        assert!(is_permanent(&ran.result), "{source}: {message}");
        assert!(
            message.contains("truncated") && message.contains("source"),
            "{source}: {message}"
        );
        assert!(
            !config.files.dir.join("resized").exists(),
            "{source}: nothing written"
        );
    }
}
