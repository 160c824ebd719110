//! The three meta files of an IJB-B/IJB-C folder as insightface distributes them, read into
//! flat arrays: per image its name, landmarks, faceness, template and media; per pair its two
//! template indices and label.

use anyhow::{bail, ensure, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::lines::{expect_fields, int, non_empty, parse_file, real};

/// Which benchmark: the file prefix (`ijbc_…`) and the log-key prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum Target {
    #[value(name = "IJBC", alias = "ijbc")]
    Ijbc,
    #[value(name = "IJBB", alias = "ijbb")]
    Ijbb,
}

impl Target {
    /// `ijbc` or `ijbb`: the meta files' prefix and the keys' prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            Target::Ijbc => "ijbc",
            Target::Ijbb => "ijbb",
        }
    }

    /// The benchmark whose pair file `dir/meta` holds (IJB-C when it holds both).
    pub fn detect(dir: &Path) -> Result<Target> {
        ensure!(dir.is_dir(), "IJB folder {} does not exist", dir.display());
        let found = [Target::Ijbc, Target::Ijbb].into_iter().find(|t| t.pairs_file(dir).is_file());
        found.ok_or_else(|| {
            anyhow::anyhow!(
                "{} holds neither {} nor {} (the IJB-C or IJB-B layout of insightface's eval_ijbc.py)",
                dir.display(),
                Target::Ijbc.pairs_file(dir).display(),
                Target::Ijbb.pairs_file(dir).display()
            )
        })
    }

    pub fn landmarks_file(self, dir: &Path) -> PathBuf {
        dir.join("meta").join(format!("{}_name_5pts_score.txt", self.prefix()))
    }

    pub fn media_file(self, dir: &Path) -> PathBuf {
        dir.join("meta").join(format!("{}_face_tid_mid.txt", self.prefix()))
    }

    pub fn pairs_file(self, dir: &Path) -> PathBuf {
        dir.join("meta").join(format!("{}_template_pair_label.txt", self.prefix()))
    }
}

/// One line of `<target>_name_5pts_score.txt`: the image, its five landmarks (as float32,
/// as eval_ijbc.py reads them) and its detector (faceness) score.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageLine {
    pub name: String,
    pub landmarks: [[f32; 2]; 5],
    pub faceness: f32,
}

/// An IJB folder's meta data. Images are in the order of the landmark file, which
/// eval_ijbc.py assumes the media file shares line by line; here that is checked.
#[derive(Debug)]
pub struct Meta {
    pub target: Target,
    pub images: Vec<ImageLine>,
    /// Per image, the index of its template in `template_ids`.
    pub template_of: Vec<u32>,
    /// Per image, its media id as written.
    pub media_of: Vec<i64>,
    /// The distinct template ids, ascending (np.unique's order).
    pub template_ids: Vec<i64>,
    pub pairs: Pairs,
}

/// The pair list as template indices, in the pair file's order.
#[derive(Debug, Default)]
pub struct Pairs {
    pub first: Vec<u32>,
    pub second: Vec<u32>,
    pub genuine: Vec<bool>,
}

impl Pairs {
    pub fn len(&self) -> usize {
        self.genuine.len()
    }

    pub fn is_empty(&self) -> bool {
        self.genuine.is_empty()
    }
}

impl Meta {
    /// Reads `DIR/meta/<target>_*.txt`.
    pub fn read(dir: &Path, target: Target) -> Result<Meta> {
        ensure!(dir.is_dir(), "IJB folder {} does not exist", dir.display());
        let (lm_path, media_path) = (target.landmarks_file(dir), target.media_file(dir));
        let images = non_empty(parse_file(&lm_path, image_line)?, &lm_path)?;
        let media = non_empty(parse_file(&media_path, media_line)?, &media_path)?;
        check_same_images(&images, &media, &lm_path, &media_path)?;
        let template_ids = distinct(media.iter().map(|m| m.1));
        let index = TemplateIndex::new(&template_ids);
        let template_of = media.iter().map(|m| index.get(m.1).expect("every image's template is listed")).collect();
        let media_of = media.iter().map(|m| m.2).collect();
        let pairs = read_pairs(&target.pairs_file(dir), &index)?;
        Ok(Meta { target, images, template_of, media_of, template_ids, pairs })
    }

    /// The image file of image `i`.
    pub fn image_path(dir: &Path, name: &str) -> PathBuf {
        dir.join("loose_crop").join(name)
    }
}

fn image_line(f: &[&str]) -> Result<ImageLine, String> {
    expect_fields(f, 12, "name x1 y1 x2 y2 x3 y3 x4 y4 x5 y5 faceness")?;
    let mut landmarks = [[0f32; 2]; 5];
    for (p, point) in landmarks.iter_mut().enumerate() {
        point[0] = real(f[1 + 2 * p], &format!("landmark x{}", p + 1))?;
        point[1] = real(f[2 + 2 * p], &format!("landmark y{}", p + 1))?;
    }
    Ok(ImageLine { name: f[0].to_string(), landmarks, faceness: real(f[11], "faceness score")? })
}

fn media_line(f: &[&str]) -> Result<(String, i64, i64), String> {
    expect_fields(f, 3, "name template_id media_id")?;
    Ok((f[0].to_string(), int(f[1], "template id")?, int(f[2], "media id")?))
}

/// eval_ijbc.py pairs the two files by line number; a line naming another image would
/// silently give it the wrong template.
fn check_same_images(images: &[ImageLine], media: &[(String, i64, i64)], lm: &Path, md: &Path) -> Result<()> {
    for (i, (img, m)) in images.iter().zip(media).enumerate() {
        ensure!(
            img.name == m.0,
            "{}, line {}: image {:?}, but line {} of {} names {:?} (the two files must list the same images in the same order)",
            md.display(),
            i + 1,
            m.0,
            i + 1,
            lm.display(),
            img.name
        );
    }
    ensure!(
        images.len() == media.len(),
        "{} has {} lines but {} has {} (one line per image in both)",
        lm.display(),
        images.len(),
        md.display(),
        media.len()
    );
    Ok(())
}

fn distinct(ids: impl Iterator<Item = i64>) -> Vec<i64> {
    let mut v: Vec<i64> = ids.collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Template id → index: a flat table when the ids are small (IJB's are), a map otherwise.
enum TemplateIndex {
    Dense { min: i64, slot: Vec<u32> },
    Map(HashMap<i64, u32>),
}

/// Largest id span looked up through a flat table (64 MiB of u32).
const DENSE_SPAN: i64 = 1 << 24;

impl TemplateIndex {
    fn new(sorted: &[i64]) -> TemplateIndex {
        let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
        match max.checked_sub(min) {
            Some(span) if span < DENSE_SPAN => {
                let mut slot = vec![u32::MAX; span as usize + 1];
                for (i, &t) in sorted.iter().enumerate() {
                    slot[(t - min) as usize] = i as u32;
                }
                TemplateIndex::Dense { min, slot }
            }
            _ => TemplateIndex::Map(sorted.iter().enumerate().map(|(i, &t)| (t, i as u32)).collect()),
        }
    }

    fn get(&self, id: i64) -> Option<u32> {
        match self {
            TemplateIndex::Dense { min, slot } => {
                let at = usize::try_from(id.checked_sub(*min)?).ok()?;
                slot.get(at).copied().filter(|&i| i != u32::MAX)
            }
            TemplateIndex::Map(m) => m.get(&id).copied(),
        }
    }
}

fn read_pairs(path: &Path, index: &TemplateIndex) -> Result<Pairs> {
    let rows = parse_file(path, |f| {
        expect_fields(f, 3, "template1 template2 label")?;
        let mut t = [0u32; 2];
        for (k, slot) in t.iter_mut().enumerate() {
            let id = int(f[k], "template id")?;
            *slot = index.get(id).ok_or_else(|| format!("template {id} has no image in the media file"))?;
        }
        let genuine = match int(f[2], "label")? {
            0 => false,
            1 => true,
            l => return Err(format!("label {l} is neither 0 (impostor) nor 1 (genuine)")),
        };
        Ok((t[0], t[1], genuine))
    })?;
    if rows.is_empty() {
        bail!("{} has no pairs", path.display());
    }
    let mut pairs = Pairs {
        first: Vec::with_capacity(rows.len()),
        second: Vec::with_capacity(rows.len()),
        genuine: Vec::with_capacity(rows.len()),
    };
    for (a, b, g) in rows {
        pairs.first.push(a);
        pairs.second.push(b);
        pairs.genuine.push(g);
    }
    Ok(pairs)
}
