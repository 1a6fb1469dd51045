//! Test-pattern JPEGs for the example camera and the tests: a moving colour bar and the frame
//! counter drawn as large seven-segment digits, so every frame differs visibly.

/// Which segments (a..g) each digit lights.
const SEGMENTS: [u8; 10] = [
    0b0111111, 0b0000110, 0b1011011, 0b1001111, 0b1100110, 0b1101101, 0b1111101, 0b0000111,
    0b1111111, 0b1101111,
];

fn fill(rgb: &mut [u8], width: usize, x0: usize, y0: usize, w: usize, h: usize, colour: [u8; 3]) {
    let height = rgb.len() / 3 / width;
    for y in y0..(y0 + h).min(height) {
        for x in x0..(x0 + w).min(width) {
            let i = (y * width + x) * 3;
            rgb[i..i + 3].copy_from_slice(&colour);
        }
    }
}

fn digit(rgb: &mut [u8], width: usize, x: usize, y: usize, size: usize, d: usize) {
    let (t, l) = (size / 5, size);
    let on = SEGMENTS[d % 10];
    let white = [255, 255, 255];
    let segs = [
        (x + t, y, l, t),                 // a
        (x + t + l, y + t, t, l),         // b
        (x + t + l, y + 2 * t + l, t, l), // c
        (x + t, y + 2 * t + 2 * l, l, t), // d
        (x, y + 2 * t + l, t, l),         // e
        (x, y + t, t, l),                 // f
        (x + t, y + t + l, l, t),         // g
    ];
    for (i, (sx, sy, w, h)) in segs.iter().enumerate() {
        if on & (1 << i) != 0 {
            fill(rgb, width, *sx, *sy, *w, *h, white);
        }
    }
}

/// Frame `n` as an RGB picture of `width` × `height`.
pub fn picture(n: u64, width: usize, height: usize) -> Vec<u8> {
    let mut rgb = vec![0u8; width * height * 3];
    for y in 0..height {
        for x in 0..width {
            let i = (y * width + x) * 3;
            rgb[i] = (x * 255 / width.max(1)) as u8;
            rgb[i + 1] = (y * 255 / height.max(1)) as u8;
            rgb[i + 2] = 96;
        }
    }
    let bar = (n as usize * 8) % width.max(1);
    fill(
        &mut rgb,
        width,
        bar,
        0,
        width / 16 + 1,
        height,
        [255, 40, 40],
    );
    let size = (height / 6).min(width / 10).max(6);
    let text = format!("{n:06}");
    for (k, ch) in text.bytes().enumerate() {
        let x = width / 16 + k * (size + size / 2);
        digit(&mut rgb, width, x, height / 3, size, usize::from(ch - b'0'));
    }
    rgb
}

/// Frame `n` as a baseline JPEG.
pub fn jpeg(n: u64, width: u16, height: u16, quality: u8) -> Vec<u8> {
    let rgb = picture(n, usize::from(width), usize::from(height));
    let mut out = Vec::new();
    let encoder = jpeg_encoder::Encoder::new(&mut out, quality);
    encoder
        .encode(&rgb, width, height, jpeg_encoder::ColorType::Rgb)
        .expect("encoding a generated picture");
    out
}
