//! Running totals of a read, kept so the set can be checked against its `property` file
//! (and reported) without a second pass over tens of GB.

use super::payload::class_id;
use super::property::image_size;
use super::{Header, RecordItem};

/// Distinct image sizes remembered; past this, further new sizes are only counted.
const MAX_SIZES: usize = 256;

#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub header: Option<Header>,
    pub images: u64,
    pub identities: u64,
    pub skipped: u64,
    pub image_bytes: u64,
    /// The largest whole-number class read.
    pub max_class: Option<u64>,
    /// Images whose class is negative, fractional, not finite or 2^24 or more (skipped).
    pub bad_labels: u64,
    /// (key, label) of the first such image.
    pub first_bad_label: Option<(Option<u64>, f32)>,
    /// (height, width) from each image's header, `None` when not a JPEG or PNG, with counts.
    pub image_sizes: Vec<(Option<(u32, u32)>, u64)>,
    /// Images whose size was new after `MAX_SIZES` distinct ones.
    pub untracked_sizes: u64,
    classes_seen: Vec<u64>,
    /// Images whose key the header's layout puts elsewhere (kept as images).
    pub layout_conflicts: u64,
    /// (key, offset) of the first such image.
    pub first_layout_conflict: Option<(u64, u64)>,
}

impl Summary {
    pub(crate) fn count(&mut self, item: &RecordItem) {
        match item {
            RecordItem::Skipped(_) => self.skipped += 1,
            RecordItem::Identity(_) => self.identities += 1,
            RecordItem::Image(image) => {
                self.images += 1;
                if image.outside_layout {
                    self.layout_conflicts += 1;
                    self.first_layout_conflict.get_or_insert((image.key.unwrap_or(0), image.offset));
                }
                self.image_bytes += image.image.len() as u64;
                self.count_class(image.key, image.label);
                self.count_size(image_size(&image.image));
            }
        }
    }

    fn count_class(&mut self, key: Option<u64>, label: f32) {
        let Some(class) = class_id(label).map(u64::from) else {
            self.bad_labels += 1;
            self.first_bad_label.get_or_insert((key, label));
            return;
        };
        self.max_class = self.max_class.max(Some(class));
        let (word, bit) = ((class / 64) as usize, class % 64);
        if self.classes_seen.len() <= word {
            self.classes_seen.resize(word + 1, 0);
        }
        self.classes_seen[word] |= 1 << bit;
    }

    fn count_size(&mut self, size: Option<(u32, u32)>) {
        if let Some(entry) = self.image_sizes.iter_mut().find(|(s, _)| *s == size) {
            entry.1 += 1;
        } else if self.image_sizes.len() < MAX_SIZES {
            self.image_sizes.push((size, 1));
        } else {
            self.untracked_sizes += 1;
        }
    }

    /// How many distinct classes have at least one image.
    pub fn distinct_classes(&self) -> u64 {
        self.classes_seen.iter().map(|w| w.count_ones() as u64).sum()
    }
}
