//! `trainer synth`: procedurally generated, learnable face-like identities.
//!
//! An identity is a fixed set of drawing parameters (oval, skin, eyes, brows, nose, mouth,
//! hair, marks); its gender and age bucket change what is drawn (hair length, lips,
//! stubble, wrinkles, grey hair), so FR, Gender and Age heads all have something to learn.
//! Each image re-draws the identity under a random pose, lighting and noise. Everything
//! is a pure function of (seed, identity, image), so the output is byte-identical per seed.

use crate::format::idx::MAX_CLASSES;
use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `DIR/id_NNNNN/KKKKK.jpg` (one class folder per identity) and `DIR/list.tsv`
/// (`path label gender age`), ready for `trainer pack DIR` or `trainer pack DIR --list`.
#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// Output folder (created; existing files with the same names are overwritten).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of identities (classes), at most 2^24. The total image count is checked
    /// against the free disk space before anything is written.
    #[arg(long, value_parser = crate::bounds::count::<usize>(1 << 24))]
    pub identities: usize,
    /// Images per identity.
    #[arg(long, value_parser = crate::bounds::count::<usize>(1 << 24))]
    pub per_identity: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 112, value_parser = crate::bounds::int::<usize>(16, 4096))]
    pub size: usize,
    /// Seed; the same seed gives byte-identical files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image encoding.
    #[arg(long, value_enum, default_value_t = Format::Jpeg)]
    pub format: Format,
    /// JPEG quality (1-100).
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub quality: u8,
    /// Class folders by gender (`0_male/`, `1_female/`, as in the seed's gender sets)
    /// instead of one folder per identity; `list.tsv` still gives identity, gender and age.
    #[arg(long)]
    pub gender: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
}

impl Format {
    fn ext(self) -> &'static str {
        match self {
            Format::Jpeg => "jpg",
            Format::Png => "png",
        }
    }
}

/// Images rendered and written per round; bounds memory whatever the request.
const ROUND: usize = 4096;

pub fn synth(args: &SynthArgs) -> Result<()> {
    anyhow::ensure!(args.identities > 0 && args.per_identity > 0, "--identities and --per-identity must be > 0");
    anyhow::ensure!(
        args.identities <= MAX_CLASSES,
        "--identities {} is more than the {MAX_CLASSES} (2^24) classes a dataset may have",
        args.identities
    );
    anyhow::ensure!((16..=4096).contains(&args.size), "--size must be in 16..=4096, got {}", args.size);
    let total = args.identities.checked_mul(args.per_identity).context("--identities × --per-identity overflows")?;
    check_disk(args, total)?;
    let start = std::time::Instant::now();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let list_path = args.out.join("list.tsv");
    let mut list = std::io::BufWriter::new(
        std::fs::File::create(&list_path).with_context(|| format!("creating {}", list_path.display()))?,
    );
    list.write_all(b"path\tlabel\tgender\tage\n").with_context(|| format!("writing {}", list_path.display()))?;
    for first in (0..total).step_by(ROUND) {
        let jobs: Vec<(usize, usize)> =
            (first..total.min(first + ROUND)).map(|j| (j / args.per_identity, j % args.per_identity)).collect();
        let id0 = jobs[0].0;
        let ids: Vec<Identity> = (id0..=jobs[jobs.len() - 1].0).map(|i| Identity::new(args.seed, i)).collect();
        let rels: Vec<String> = jobs.iter().map(|&(i, k)| rel_path(args, &ids[i - id0], k)).collect();
        for dir in rels.iter().filter_map(|r| Path::new(r).parent()).collect::<std::collections::BTreeSet<_>>() {
            let d = args.out.join(dir);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        jobs.par_iter().zip(rels.par_iter()).try_for_each(|(&(i, k), rel)| {
            let pixels = render(&ids[i - id0], &Pose::new(args.seed, i, k), args.size);
            let bytes = encode(&pixels, args.size, args.format, args.quality)?;
            let path = args.out.join(rel);
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
        })?;
        for (&(i, _), rel) in jobs.iter().zip(&rels) {
            let id = &ids[i - id0];
            writeln!(list, "{rel}\t{i}\t{}\t{}", id.gender, id.age)
                .with_context(|| format!("writing {}", list_path.display()))?;
        }
    }
    list.flush().with_context(|| format!("writing {}", list_path.display()))?;
    tracing::info!(
        "synth: {total} images of {} identities ({}px {:?}) in {} ({:.1} s)",
        args.identities,
        args.size,
        args.format,
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Refuses a request the disk cannot hold, before writing anything: one image is rendered
/// and encoded to size the rest (with a quarter's margin, rounded up to the file system's
/// block), plus its line in `list.tsv`.
fn check_disk(args: &SynthArgs, total: usize) -> Result<()> {
    let sample = encode(
        &render(&Identity::new(args.seed, 0), &Pose::new(args.seed, 0, 0), args.size),
        args.size,
        args.format,
        args.quality,
    )?;
    let (free, block) = free_space(&args.out)?;
    let per_image = (sample.len() as u64 * 5 / 4).div_ceil(block.max(1)) * block.max(1) + 40;
    let need = total as u128 * per_image as u128;
    if need > free as u128 {
        let gb = |b: u128| b as f64 / 1e9;
        bail!(
            "synth would write {total} images of about {:.1} KB each, {:.1} GB in all, but only {:.1} GB are free at {}; ask for fewer --identities or --per-identity, or a smaller --size",
            sample.len() as f64 / 1e3, gb(need), gb(free as u128), args.out.display()
        );
    }
    Ok(())
}

/// Bytes free to unprivileged users and the block size, on the file system that holds
/// `dir` (or its nearest existing ancestor).
fn free_space(dir: &Path) -> Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let existing = dir.ancestors().find(|p| p.exists()).filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let c = std::ffi::CString::new(existing.as_os_str().as_bytes()).context("output path contains a NUL byte")?;
    // SAFETY: statvfs fills the zeroed struct we own from a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("reading free space at {}", existing.display()));
    }
    Ok((st.f_bavail as u64 * st.f_frsize as u64, st.f_frsize as u64))
}

fn rel_path(args: &SynthArgs, id: &Identity, k: usize) -> String {
    let ext = args.format.ext();
    if args.gender {
        let folder = if id.gender == 0 { "0_male" } else { "1_female" };
        format!("{folder}/id_{:05}_{k:05}.{ext}", id.index)
    } else {
        format!("id_{:05}/{k:05}.{ext}", id.index)
    }
}

fn encode(rgb: &[u8], size: usize, format: Format, quality: u8) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    let mut out = Vec::with_capacity(rgb.len() / 4);
    let (w, h, ct) = (size as u32, size as u32, image::ExtendedColorType::Rgb8);
    match format {
        Format::Jpeg => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality).encode(rgb, w, h, ct)?,
        Format::Png => image::codecs::png::PngEncoder::new(&mut out).write_image(rgb, w, h, ct)?,
    }
    Ok(out)
}

type Rgb = [f32; 3];

/// The fixed drawing parameters of one identity (face units: the image spans [-1, 1]).
#[derive(Clone, Debug)]
pub struct Identity {
    pub index: usize,
    /// 0 male, 1 female.
    pub gender: i8,
    /// Age bucket 0..=6.
    pub age: i8,
    background: Rgb,
    skin: Rgb,
    face: (f32, f32, f32), // centre y, radius x, radius y
    eye: (f32, f32, f32),  // half spacing, height, radius
    iris: Rgb,
    brow: (f32, f32, f32),       // gap above eye, thickness, tilt
    nose: (f32, f32),            // length, width
    mouth: (f32, f32, f32, f32), // y, half width, curvature, thickness
    lips: Rgb,
    hair: Rgb,
    hairline: (f32, f32, f32),        // height, wave amplitude, wave phase
    marks: Vec<(f32, f32, f32, Rgb)>, // x, y, radius, colour offset
}

fn range(r: &mut Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * r.unit() as f32
}

fn colour(r: &mut Rng, lo: Rgb, hi: Rgb) -> Rgb {
    [range(r, lo[0], hi[0]), range(r, lo[1], hi[1]), range(r, lo[2], hi[2])]
}

fn mix_rgb(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]
}

impl Identity {
    pub fn new(seed: u64, index: usize) -> Identity {
        let mut r = Rng::derive(seed, index as u64, 0x1D);
        let gender = r.below(2) as i8;
        let age = r.below(7) as i8;
        let a = age as f32 / 6.0;
        let tone = range(&mut r, 0.0, 1.0);
        let skin = mix_rgb([236.0, 200.0, 170.0], [110.0, 72.0, 50.0], tone);
        let shade_t = range(&mut r, 0.0, 1.0);
        let jitter = colour(&mut r, [-15.0, -15.0, -15.0], [25.0, 10.0, 10.0]);
        let base_hair = mix_rgb([25.0, 18.0, 12.0], [215.0, 180.0, 120.0], shade_t * shade_t);
        let base_hair = [base_hair[0] + jitter[0], base_hair[1] + jitter[1], base_hair[2] + jitter[2]];
        let hair = mix_rgb(base_hair, [185.0, 185.0, 190.0], a * a * 0.9);
        let lips = if gender == 1 {
            colour(&mut r, [170.0, 40.0, 60.0], [215.0, 80.0, 100.0])
        } else {
            mix_rgb(skin, [120.0, 60.0, 60.0], 0.45)
        };
        let n_marks = 2 + r.below(3);
        let marks = (0..n_marks)
            .map(|_| {
                let (x, y) = (range(&mut r, -0.4, 0.4), range(&mut r, -0.2, 0.55));
                let rad = range(&mut r, 0.03, 0.09);
                (x, y, rad, colour(&mut r, [-70.0, -60.0, -60.0], [25.0, 10.0, 10.0]))
            })
            .collect();
        Identity {
            index,
            gender,
            age,
            background: colour(&mut r, [40.0, 40.0, 40.0], [220.0, 220.0, 220.0]),
            skin,
            face: (range(&mut r, 0.0, 0.1), range(&mut r, 0.48, 0.62) + 0.03 * a, range(&mut r, 0.62, 0.78)),
            eye: (range(&mut r, 0.17, 0.27), range(&mut r, -0.12, 0.0), range(&mut r, 0.045, 0.075)),
            iris: colour(&mut r, [30.0, 30.0, 20.0], [120.0, 150.0, 200.0]),
            brow: (range(&mut r, 0.08, 0.14), range(&mut r, 0.015, 0.04), range(&mut r, -0.25, 0.25)),
            nose: (range(&mut r, 0.15, 0.28), range(&mut r, 0.04, 0.09)),
            mouth: (
                range(&mut r, 0.33, 0.45),
                range(&mut r, 0.12, 0.22),
                range(&mut r, -0.12, 0.12),
                range(&mut r, 0.015, 0.04),
            ),
            lips,
            hair,
            hairline: (
                range(&mut r, -0.55, -0.35),
                range(&mut r, 0.0, 0.06),
                range(&mut r, 0.0, std::f32::consts::TAU),
            ),
            marks,
        }
    }
}

/// One image's nuisance variables: pose, lighting and noise.
#[derive(Clone, Debug)]
pub struct Pose {
    shift: (f32, f32),
    angle: f32,
    scale: f32,
    gain: f32,
    gradient: (f32, f32),
    noise: f32,
    noise_seed: u64,
}

impl Pose {
    pub fn new(seed: u64, identity: usize, image: usize) -> Pose {
        let mut r = Rng::derive(seed ^ 0x5EED_F00D, identity as u64, image as u64);
        Pose {
            shift: (range(&mut r, -0.08, 0.08), range(&mut r, -0.08, 0.08)),
            angle: range(&mut r, -0.17, 0.17),
            scale: range(&mut r, 0.9, 1.1),
            gain: range(&mut r, 0.75, 1.2),
            gradient: (range(&mut r, -0.25, 0.25), range(&mut r, -0.25, 0.25)),
            noise: range(&mut r, 2.0, 10.0),
            noise_seed: r.next_u64(),
        }
    }
}

/// Coverage of an ellipse at (u, v), antialiased over about one pixel (`px` face units).
fn ellipse(u: f32, v: f32, cx: f32, cy: f32, rx: f32, ry: f32, px: f32) -> f32 {
    if (u - cx).abs() > rx + px || (v - cy).abs() > ry + px {
        return 0.0;
    }
    let (du, dv) = ((u - cx) / rx, (v - cy) / ry);
    let d = (du * du + dv * dv).sqrt();
    ((1.0 - d) * rx.min(ry) / px + 0.5).clamp(0.0, 1.0)
}

/// Coverage of a horizontal band |v - y(u)| < half, for |u - cx| < half_w.
fn band(u: f32, v: f32, cx: f32, half_w: f32, y: f32, half: f32, px: f32) -> f32 {
    let along = ((half_w - (u - cx).abs()) / px + 0.5).clamp(0.0, 1.0);
    let across = ((half - (v - y).abs()) / px + 0.5).clamp(0.0, 1.0);
    along * across
}

fn over(c: &mut Rgb, paint: Rgb, alpha: f32) {
    if alpha > 0.0 {
        *c = mix_rgb(*c, paint, alpha);
    }
}

fn shade(c: Rgb, f: f32) -> Rgb {
    [c[0] * f, c[1] * f, c[2] * f]
}

/// Draws the identity at face coordinates (u, v); `px` is one pixel in face units.
fn paint(id: &Identity, u: f32, v: f32, px: f32) -> Rgb {
    let mut c = mix_rgb(id.background, shade(id.background, 0.7), (v + 1.0) * 0.5);
    let (fy, frx, fry) = id.face;
    let hair_behind = if id.gender == 1 {
        ellipse(u, v, 0.0, fy + 0.05, frx + 0.17, fry + 0.3, px) * (((0.95 - v) / px).clamp(0.0, 1.0))
    } else {
        ellipse(u, v, 0.0, fy - 0.06, frx + 0.05, fry + 0.02, px) * (((fy - 0.1 - v) / px).clamp(0.0, 1.0))
    };
    over(&mut c, id.hair, hair_behind);
    let in_face = ellipse(u, v, 0.0, fy, frx, fry, px);
    if in_face <= 0.0 {
        return c;
    }
    let r2 = (u / frx).powi(2) + ((v - fy) / fry).powi(2);
    let mut f = shade(id.skin, 1.0 - 0.25 * r2);
    paint_features(id, u, v, px, &mut f);
    over(&mut c, f, in_face);
    c
}

fn paint_features(id: &Identity, u: f32, v: f32, px: f32, c: &mut Rgb) {
    let skin = id.skin;
    for &(x, y, r, off) in &id.marks {
        over(c, [skin[0] + off[0], skin[1] + off[1], skin[2] + off[2]], 0.8 * ellipse(u, v, x, y, r, r * 0.8, px));
    }
    if id.gender == 0 && id.age >= 2 {
        let jaw = ellipse(u, v, 0.0, id.mouth.0 + 0.08, id.face.1 * 0.8, 0.3, px);
        over(c, shade(skin, 0.72), 0.6 * jaw);
    }
    paint_wrinkles(id, u, v, px, c);
    let (ex, ey, er) = id.eye;
    for side in [-1.0f32, 1.0] {
        let cx = side * ex;
        over(c, [240.0, 240.0, 235.0], ellipse(u, v, cx, ey, er * 1.7, er, px));
        over(c, id.iris, ellipse(u, v, cx, ey, er * 0.8, er * 0.8, px));
        over(c, [15.0, 15.0, 15.0], ellipse(u, v, cx, ey, er * 0.35, er * 0.35, px));
        let (gap, thick, tilt) = id.brow;
        let by = ey - gap + tilt * side * (u - cx);
        over(c, shade(id.hair, 0.6), band(u, v, cx, er * 2.0, by, thick, px));
    }
    let (len, width) = id.nose;
    over(c, shade(skin, 0.8), band(u, v, 0.0, width * 0.35, ey + len * 0.5, len * 0.5, px));
    for side in [-1.0f32, 1.0] {
        over(c, shade(skin, 0.45), ellipse(u, v, side * width * 0.6, ey + len, width * 0.35, width * 0.2, px));
    }
    let (my, mw, curve, mt) = id.mouth;
    let y = my + curve * (u / mw).powi(2) - curve * 0.5;
    over(c, id.lips, band(u, v, 0.0, mw, y, mt, px));
    let (hl, amp, phase) = id.hairline;
    let fringe = ((hl + id.face.0 + amp * (u * 9.0 + phase).sin() - v) / px).clamp(0.0, 1.0);
    over(c, id.hair, fringe);
}

/// Age shows as forehead lines and, from bucket 4, lines beside the mouth.
fn paint_wrinkles(id: &Identity, u: f32, v: f32, px: f32, c: &mut Rgb) {
    let lines = id.age as usize;
    let dark = shade(id.skin, 0.6);
    let top = id.eye.1 - id.brow.0 - 0.07;
    for i in 0..lines.div_ceil(2) {
        over(c, dark, 0.7 * band(u, v, 0.0, 0.28, top - 0.05 * i as f32, 0.008, px));
    }
    if id.age >= 4 {
        let (my, mw, _, _) = id.mouth;
        for side in [-1.0f32, 1.0] {
            let x = side * (mw + 0.04) + side * 0.15 * (v - my);
            over(c, dark, 0.7 * band(u, v, x, 0.008, my - 0.05, 0.09, px));
        }
    }
}

/// Renders an RGB8 image: inverse pose per pixel, then lighting and noise.
pub fn render(id: &Identity, pose: &Pose, size: usize) -> Vec<u8> {
    let mut out = vec![0u8; size * size * 3];
    let (sin, cos) = pose.angle.sin_cos();
    let px = 2.0 / size as f32 / pose.scale;
    let mut noise = Rng::new(pose.noise_seed);
    for y in 0..size {
        for x in 0..size {
            let gx = (x as f32 + 0.5) / size as f32 * 2.0 - 1.0;
            let gy = (y as f32 + 0.5) / size as f32 * 2.0 - 1.0;
            let (dx, dy) = (gx - pose.shift.0, gy - pose.shift.1);
            let u = (cos * dx + sin * dy) / pose.scale;
            let v = (-sin * dx + cos * dy) / pose.scale;
            let c = paint(id, u, v, px);
            let light = pose.gain * (1.0 + pose.gradient.0 * gx + pose.gradient.1 * gy);
            let o = (y * size + x) * 3;
            // Six 10-bit uniforms from one draw: a triangular (sum of two) per channel.
            let bits = noise.next_u64();
            for ch in 0..3 {
                let a = (bits >> (20 * ch)) & 1023;
                let b = (bits >> (20 * ch + 10)) & 1023;
                let n = (a + b) as f32 / 1023.0 - 1.0;
                out[o + ch] = ((c[ch] * light + n * 2.4 * pose.noise).clamp(0.0, 255.0) + 0.5) as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn distance(a: &[u8], b: &[u8]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).abs()).sum::<f64>() / a.len() as f64
    }

    #[test]
    fn rendering_is_deterministic() {
        let id = Identity::new(3, 5);
        assert_eq!(render(&id, &Pose::new(3, 5, 1), 48), render(&Identity::new(3, 5), &Pose::new(3, 5, 1), 48));
        assert_ne!(render(&id, &Pose::new(3, 5, 1), 48), render(&id, &Pose::new(3, 5, 2), 48));
    }

    #[test]
    fn same_identity_is_closer_than_other_identities() {
        let (n_ids, per, size) = (12, 4, 64);
        let imgs: Vec<Vec<Vec<u8>>> = (0..n_ids)
            .map(|i| (0..per).map(|k| render(&Identity::new(9, i), &Pose::new(9, i, k), size)).collect())
            .collect();
        let (mut same, mut ns, mut diff, mut nd) = (0.0, 0, 0.0, 0);
        for i in 0..n_ids {
            for j in 0..n_ids {
                for a in 0..per {
                    for b in 0..per {
                        if i == j && a < b {
                            same += distance(&imgs[i][a], &imgs[j][b]);
                            ns += 1;
                        } else if i < j {
                            diff += distance(&imgs[i][a], &imgs[j][b]);
                            nd += 1;
                        }
                    }
                }
            }
        }
        let (same, diff) = (same / ns as f64, diff / nd as f64);
        assert!(same * 1.5 < diff, "same-identity distance {same:.1} vs others {diff:.1}");
    }

    #[test]
    fn identities_have_fixed_gender_and_age_in_range() {
        let ids: Vec<Identity> = (0..200).map(|i| Identity::new(1, i)).collect();
        assert!(ids.iter().all(|i| (0..=1).contains(&i.gender) && (0..=6).contains(&i.age)));
        assert!(ids.iter().any(|i| i.gender == 0) && ids.iter().any(|i| i.gender == 1));
        assert_eq!(ids[17].age, Identity::new(1, 17).age);
    }
}
