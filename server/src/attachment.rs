//! What the server decides about an uploaded file from its bytes alone:
//! its type (sniffed, never the uploader's claim), whether a browser may show
//! it inline, its thumbnail, and the name it is served under. Pure functions,
//! so the rules are tested without a server; `http::attachments` does the I/O.

use std::io::Cursor;

use image::{ImageFormat, ImageReader};

/// Thumbnails fit in this square (CSS pixels at 2x for a 160 px preview).
pub(crate) const THUMBNAIL_EDGE: u32 = 320;

/// How long a file uploaded but never sent is kept (a tab closed before
/// sending): long enough for any draft, short enough not to hoard space.
pub(crate) const UNSENT_UPLOAD_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Uploads examined (hashed, decoded, thumbnailed) at once on one pod:
/// each may take [`MAX_DECODER_ALLOC`] while decoding, and two of them fit
/// the chat pod's default memory limit (512 MiB) beside its connections.
pub(crate) const DECODERS_PER_POD: usize = 2;

/// Images larger than this on either side are kept as files without a
/// thumbnail: decoding them would take more memory than an upload should.
const MAX_DECODED_EDGE: u32 = 12_000;
/// Memory the decoder may take for one image (a 10 MiB PNG can claim
/// gigabytes once decoded: a decompression bomb).
const MAX_DECODER_ALLOC: u64 = 128 * 1024 * 1024;

/// What the bytes are, as far as serving them goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sniffed {
    pub content_type: &'static str,
    /// A raster image a browser shows safely in an `<img>`: served inline.
    /// Everything else (HTML and SVG above all, which could run script in
    /// our origin) is served as a download.
    pub image: Option<ImageFormat>,
}

/// The served type of `bytes`: PNG, JPEG, GIF and WebP by their magic
/// numbers; PDF and plain UTF-8 text recognised for a helpful type (still
/// downloads); anything else `application/octet-stream`.
pub(crate) fn sniff(bytes: &[u8]) -> Sniffed {
    let image = image::guess_format(bytes).ok().filter(|format| {
        matches!(
            format,
            ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP
        )
    });
    let content_type = match image {
        Some(ImageFormat::Png) => "image/png",
        Some(ImageFormat::Jpeg) => "image/jpeg",
        Some(ImageFormat::Gif) => "image/gif",
        Some(ImageFormat::WebP) => "image/webp",
        _ if bytes.starts_with(b"%PDF-") => "application/pdf",
        _ if looks_like_text(bytes) => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    Sniffed {
        content_type,
        image,
    }
}

/// UTF-8 without NULs or other control characters than whitespace. Markup is
/// text too, which is fine: it is served as `text/plain` and as a download.
fn looks_like_text(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && std::str::from_utf8(bytes).is_ok_and(|text| {
            text.chars()
                .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'))
        })
}

/// A decoded image's size and its small version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Thumbnail {
    pub width: u32,
    pub height: u32,
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
}

/// Decodes `bytes` (of `format`) within bounded memory and makes a thumbnail
/// no larger than [`THUMBNAIL_EDGE`] on either side: PNG where the image has
/// transparency, JPEG otherwise. `None` when the image cannot be decoded
/// (corrupt, truncated or too large): it is then stored as a plain file.
/// CPU-heavy: call it on the blocking pool.
pub(crate) fn thumbnail(bytes: &[u8], format: ImageFormat) -> Option<Thumbnail> {
    let image = decode(bytes, format)?;
    let (width, height) = (image.width(), image.height());
    let small = if width > THUMBNAIL_EDGE || height > THUMBNAIL_EDGE {
        image.thumbnail(THUMBNAIL_EDGE, THUMBNAIL_EDGE)
    } else {
        image
    };
    let (bytes, content_type) = encode(&small)?;
    Some(Thumbnail {
        width,
        height,
        bytes,
        content_type,
    })
}

/// Decodes within bounded memory and size (see [`MAX_DECODER_ALLOC`]).
fn decode(bytes: &[u8], format: ImageFormat) -> Option<image::DynamicImage> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DECODED_EDGE);
    limits.max_image_height = Some(MAX_DECODED_EDGE);
    limits.max_alloc = Some(MAX_DECODER_ALLOC);
    reader.limits(limits);
    reader.decode().ok()
}

/// PNG where the image has transparency, JPEG (quality 80) otherwise.
fn encode(image: &image::DynamicImage) -> Option<(Vec<u8>, &'static str)> {
    let mut out = Cursor::new(Vec::new());
    let content_type = if image.color().has_alpha() {
        image.write_to(&mut out, ImageFormat::Png).ok()?;
        "image/png"
    } else {
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
            .encode_image(&image.to_rgb8())
            .ok()?;
        "image/jpeg"
    };
    Some((out.into_inner(), content_type))
}

/// The SHA-256 of `bytes` in lowercase hex: what stored contents are named by.
pub(crate) fn content_hash(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Profile pictures are squares of this many pixels (shown at up to 64 CSS px at 2x).
pub(crate) const AVATAR_EDGE: u32 = 128;

/// A profile picture from `bytes`: the image's centre cropped square and
/// scaled to [`AVATAR_EDGE`], PNG where transparent, JPEG otherwise. `None`
/// when `bytes` are not a PNG, JPEG, GIF or WebP that decodes within the
/// same bounds as thumbnails. CPU-heavy: call it on the blocking pool.
pub(crate) fn avatar(bytes: &[u8]) -> Option<Thumbnail> {
    let format = sniff(bytes).image?;
    let image = decode(bytes, format)?;
    let (width, height) = (image.width(), image.height());
    let square = image.resize_to_fill(
        AVATAR_EDGE,
        AVATAR_EDGE,
        image::imageops::FilterType::Triangle,
    );
    let (bytes, content_type) = encode(&square)?;
    Some(Thumbnail {
        width,
        height,
        bytes,
        content_type,
    })
}

/// The name a file is stored and served under: the last path component of
/// what the client sent, without control characters, at most 200
/// characters; "file" when nothing is left.
pub(crate) fn clean_filename(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control() && !crate::validate::is_invisible_control(*c))
        .take(200)
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    if cleaned.is_empty() {
        "file".to_owned()
    } else {
        cleaned.to_owned()
    }
}

/// The `Content-Disposition` value (RFC 6266): `inline` for images,
/// `attachment` (a download) for everything else; the name as ASCII for old
/// clients and in full as UTF-8 (RFC 8187) for the rest.
pub(crate) fn content_disposition(inline: bool, filename: &str) -> String {
    let ascii: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::with_capacity(filename.len());
    for byte in filename.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    let kind = if inline { "inline" } else { "attachment" };
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32, alpha: bool) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        if alpha {
            image::RgbaImage::from_pixel(width, height, image::Rgba([200, 10, 10, 128]))
                .write_to(&mut out, ImageFormat::Png)
                .unwrap();
        } else {
            image::RgbImage::from_pixel(width, height, image::Rgb([10, 200, 10]))
                .write_to(&mut out, ImageFormat::Png)
                .unwrap();
        }
        out.into_inner()
    }

    #[test]
    fn sniffs_by_content_not_by_name() {
        assert_eq!(sniff(&png(2, 2, false)).content_type, "image/png");
        assert_eq!(sniff(&png(2, 2, false)).image, Some(ImageFormat::Png));
        assert_eq!(sniff(b"%PDF-1.7\n...").content_type, "application/pdf");
        assert_eq!(sniff(b"hello\n").content_type, "text/plain; charset=utf-8");
        assert_eq!(
            sniff(&[0, 1, 2, 255]).content_type,
            "application/octet-stream"
        );
    }

    #[test]
    fn markup_is_never_an_image() {
        for markup in [
            &b"<html><script>alert(1)</script></html>"[..],
            b"<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(1)\"/>",
            b"<?xml version=\"1.0\"?><svg/>",
        ] {
            let sniffed = sniff(markup);
            assert_eq!(sniffed.image, None);
            assert_eq!(sniffed.content_type, "text/plain; charset=utf-8");
        }
    }

    #[test]
    fn thumbnails_keep_the_aspect_and_the_transparency() {
        let thumb = thumbnail(&png(1000, 500, false), ImageFormat::Png).unwrap();
        assert_eq!((thumb.width, thumb.height), (1000, 500));
        assert_eq!(thumb.content_type, "image/jpeg");
        let decoded = image::load_from_memory(&thumb.bytes).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (320, 160));

        let thumb = thumbnail(&png(40, 80, true), ImageFormat::Png).unwrap();
        assert_eq!(thumb.content_type, "image/png");
        let decoded = image::load_from_memory(&thumb.bytes).unwrap();
        assert_eq!(
            (decoded.width(), decoded.height()),
            (40, 80),
            "never enlarged"
        );
    }

    #[test]
    fn broken_or_huge_images_get_no_thumbnail() {
        let mut truncated = png(50, 50, false);
        truncated.truncate(truncated.len() / 2);
        assert!(thumbnail(&truncated, ImageFormat::Png).is_none());
        // A PNG that claims 20,000 x 20,000 pixels is refused before decoding.
        let mut bomb = png(1, 1, false);
        bomb[16..20].copy_from_slice(&20_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&20_000u32.to_be_bytes());
        assert!(thumbnail(&bomb, ImageFormat::Png).is_none());
    }

    #[test]
    fn avatars_are_centred_squares() {
        let avatar = avatar(&png(300, 100, false)).unwrap();
        let decoded = image::load_from_memory(&avatar.bytes).unwrap();
        assert_eq!(
            (decoded.width(), decoded.height()),
            (AVATAR_EDGE, AVATAR_EDGE)
        );
        assert!(super::avatar(b"<svg/>").is_none(), "only raster images");
    }

    #[test]
    fn filenames_lose_paths_and_control_characters() {
        assert_eq!(clean_filename("../../etc/passwd"), "passwd");
        assert_eq!(clean_filename("C:\\Users\\me\\cat.png"), "cat.png");
        assert_eq!(clean_filename("a\u{0}b\r\n.txt"), "ab.txt");
        assert_eq!(clean_filename("..."), "file");
        assert_eq!(clean_filename(".bashrc"), "bashrc");
        assert_eq!(clean_filename(&"x".repeat(500)).chars().count(), 200);
    }

    #[test]
    fn dispositions_quote_safely() {
        assert_eq!(
            content_disposition(true, "cat.png"),
            "inline; filename=\"cat.png\"; filename*=UTF-8''cat.png"
        );
        assert_eq!(
            content_disposition(false, "a \"b\"; c.txt"),
            "attachment; filename=\"a _b_; c.txt\"; filename*=UTF-8''a%20%22b%22%3B%20c.txt"
        );
        assert_eq!(
            content_disposition(false, "résumé.pdf"),
            "attachment; filename=\"r_sum_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"
        );
    }
}
