//! Small deterministic images, encoded in memory.

/// `img` as PNG bytes.
pub fn png(img: &image::RgbImage) -> Vec<u8> {
    encode(img, image::ImageFormat::Png)
}

/// A small image whose pixels depend on (class, i), as JPEG or PNG bytes.
pub fn image_bytes(class: u32, i: u32, png: bool) -> Vec<u8> {
    let (w, h) = (24 + i % 5, 20 + class % 3);
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 9 + class * 40) as u8, (y * 11 + i * 7) as u8, (class * 3 + i) as u8])
    });
    encode(&img, if png { image::ImageFormat::Png } else { image::ImageFormat::Jpeg })
}

/// A 128×128 JPEG whose entropy-coded data is most of the file, so cutting it in half cuts
/// the scan (as an interrupted download does), not the headers.
pub fn large_jpeg(seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(128, 128, |x, y| {
        image::Rgb([(x * 2 + seed) as u8, (y * 2) as u8, ((x * y + seed) % 251) as u8])
    });
    encode(&img, image::ImageFormat::Jpeg)
}

fn encode(img: &image::RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encoding test image");
    out.into_inner()
}
