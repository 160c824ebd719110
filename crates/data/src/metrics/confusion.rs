//! Confusion matrix for the Gender and Age classifiers.

use std::fmt;

/// Counts of (true class, predicted class) for Gender/Age validation.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Confusion {
    pub classes: usize,
    /// Row-major `classes × classes`: row = true class, column = predicted.
    pub counts: Vec<u64>,
}

impl Confusion {
    pub fn new(classes: usize) -> Confusion {
        Confusion { classes, counts: vec![0; classes * classes] }
    }

    /// Adds predictions; true labels below 0 (unknown) are skipped, others must be < classes.
    pub fn add(&mut self, truth: &[i64], predicted: &[i64]) -> anyhow::Result<()> {
        anyhow::ensure!(truth.len() == predicted.len(), "{} labels but {} predictions", truth.len(), predicted.len());
        for (k, (&t, &p)) in truth.iter().zip(predicted).enumerate() {
            if t < 0 {
                continue;
            }
            let c = self.classes as i64;
            anyhow::ensure!(t < c && (0..c).contains(&p), "sample {k}: class {t} predicted {p}, outside 0..{c}");
            self.counts[t as usize * self.classes + p as usize] += 1;
        }
        Ok(())
    }

    pub fn count(&self, truth: usize, predicted: usize) -> u64 {
        self.counts[truth * self.classes + predicted]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Fraction on the diagonal; NaN when empty.
    pub fn accuracy(&self) -> f64 {
        let right: u64 = (0..self.classes).map(|c| self.count(c, c)).sum();
        right as f64 / self.total() as f64
    }

    /// Mean |true − predicted| in classes (for ordered classes such as age buckets); NaN
    /// when empty.
    pub fn mean_abs_error(&self) -> f64 {
        let cost: u64 = (0..self.classes)
            .flat_map(|t| (0..self.classes).map(move |p| (t, p)))
            .map(|(t, p)| self.count(t, p) * t.abs_diff(p) as u64)
            .sum();
        cost as f64 / self.total() as f64
    }

    /// Recall per true class; None for a class with no samples.
    pub fn per_class_accuracy(&self) -> Vec<Option<f64>> {
        (0..self.classes)
            .map(|c| {
                let row: u64 = self.matrix_row(c).iter().sum();
                (row > 0).then(|| self.count(c, c) as f64 / row as f64)
            })
            .collect()
    }

    fn matrix_row(&self, c: usize) -> &[u64] {
        &self.counts[c * self.classes..(c + 1) * self.classes]
    }
}

/// A table with true classes down, predictions across, and each row's accuracy.
impl fmt::Display for Confusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = (0..self.classes)
            .map(|c| c.to_string().len())
            .chain(self.counts.iter().map(|n| n.to_string().len()))
            .max()
            .unwrap_or(1)
            .max(5);
        write!(f, "{:>w$} ", "true\\pred", w = width.max(9))?;
        for c in 0..self.classes {
            write!(f, " {c:>width$}")?;
        }
        writeln!(f, " | acc")?;
        for (c, acc) in self.per_class_accuracy().into_iter().enumerate() {
            write!(f, "{c:>w$} ", w = width.max(9))?;
            for n in self.matrix_row(c) {
                write!(f, " {n:>width$}")?;
            }
            match acc {
                Some(a) => writeln!(f, " | {a:.3}")?,
                None => writeln!(f, " | -")?,
            }
        }
        write!(f, "accuracy {:.4} over {} samples", self.accuracy(), self.total())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_abs_error_counts_bucket_distance() {
        let mut c = Confusion::new(7);
        c.add(&[0, 3, 6, -1], &[0, 5, 3, 2]).unwrap();
        assert!((c.mean_abs_error() - (0.0 + 2.0 + 3.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn confusion_counts_and_accuracies() {
        let mut c = Confusion::new(3);
        // Class 0: 2 right, 1 called class 1. Class 1: 1 right. Class 2: none seen.
        c.add(&[0, 0, 0, 1, -1], &[0, 1, 0, 1, 2]).unwrap();
        assert_eq!(c.counts, vec![2, 1, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(c.total(), 4);
        assert_eq!(c.accuracy(), 0.75);
        assert_eq!(c.per_class_accuracy(), vec![Some(2.0 / 3.0), Some(1.0), None]);
        let text = c.to_string();
        assert!(
            text.contains("true\\pred") && text.contains("0.667") && text.contains("accuracy 0.7500 over 4"),
            "{text}"
        );
        assert!(c.add(&[3], &[0]).is_err());
        assert!(c.add(&[0], &[3]).is_err());
        assert!(c.add(&[0, 1], &[0]).is_err());
    }
}
