//! The few measurements every benchmark and report shares, defined once.

/// The median; the mean of the middle pair for an even count (numpy's), NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// User + system CPU seconds of this process (Linux `/proc/self/stat`, USER_HZ = 100), so
/// a rate can be stated independently of how busy the machine is. None elsewhere.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Resident memory of this process in MB: anonymous (heap, queues) and file-backed (mapped
/// shards, which are page cache the kernel can drop). NaN where `/proc` has no figure.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    pub anon_mb: f64,
    pub file_mb: f64,
}

pub fn memory() -> Memory {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mb = |field: &str| {
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.split_whitespace().next()?.parse::<f64>().ok());
        kb.map_or(f64::NAN, |kb| kb / 1024.0)
    };
    Memory { anon_mb: mb("RssAnon"), file_mb: mb("RssFile") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let spin: u64 = (0..2_000_000u64).map(std::hint::black_box).sum();
        assert!(spin > 0);
        assert!(cpu_seconds().is_some_and(|s| s >= 0.0));
        assert!(memory().anon_mb > 0.0);
    }
}
