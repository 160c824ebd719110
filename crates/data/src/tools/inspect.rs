//! `trainer inspect`: a dataset's shape at a glance, and how fast its index loads.

use crate::format::{Manifest, Version};
use crate::reader::{Dataset, Layout};
use crate::stats::cpu_seconds;
use crate::targets::{resolve_column, Column, Head, SetSpec};
use anyhow::Result;
use std::fmt::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Print a dataset's records, labels, per-shard counts and sizes, and format version.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// `<dir>/<name>` (all shards) or a legacy `<dir>/<name>` .bin/.idx pair.
    pub dataset: PathBuf,
    /// Also print the first N records (path, label, bytes, gender, age, crc32c).
    #[arg(long, default_value_t = 0)]
    pub head: usize,
}

/// The report `trainer inspect` prints.
pub fn inspect(args: &InspectArgs) -> Result<String> {
    let (started, cpu0) = (Instant::now(), cpu_seconds());
    let ds = Dataset::open(&args.dataset)?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds().zip(cpu0).map(|(b, a)| b - a);
    let mut out = String::new();
    let layout = Layout::resolve(&args.dataset)?;
    let version = ds.shards.first().map_or("(no shards)", |s| s.version().name());
    let bytes: u64 = ds.shards.iter().map(|s| s.bin_len()).sum();
    let _ = writeln!(out, "dataset {} — {} shards, format {version}", args.dataset.display(), ds.total_shards);
    let _ = writeln!(out, "records {}  classes {}  payload {:.1} MB", ds.len(), ds.num_classes, bytes as f64 / 1e6);
    let rate = |t: f64| ds.len() as f64 / t.max(1e-9) / 1e6;
    // /proc counts CPU time in 10 ms ticks: under 10 of them a rate would be mostly rounding.
    let cpu_note = match cpu {
        Some(c) if c >= 0.1 => format!(", {:.0} ms CPU = {:.2} M records per CPU-second", c * 1e3, rate(c)),
        Some(_) => ", under 100 ms CPU (too short to rate at /proc's 10 ms ticks)".to_string(),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "index load: {} records in {:.1} ms wall ({:.2} M records/s){cpu_note}",
        ds.len(),
        secs * 1e3,
        rate(secs)
    );
    print_shards(&mut out, &ds);
    print_classes(&mut out, &ds);
    print_attributes(&mut out, &ds);
    print_tasks(&mut out, &ds, &args.dataset);
    print_sidecars(&mut out, &layout, &ds);
    print_head(&mut out, &ds, args.head);
    Ok(out)
}

fn print_shards(out: &mut String, ds: &Dataset) {
    let _ = writeln!(out, "{:>6} {:>10} {:>8} {:>14}  file", "shard", "records", "labels", "bytes");
    for s in &ds.shards {
        let mut labels = s.labels().to_vec();
        labels.sort_unstable();
        labels.dedup();
        let file = s.bin_path().file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let _ = writeln!(out, "{:>6} {:>10} {:>8} {:>14}  {file}", s.k(), s.len(), labels.len(), s.bin_len());
    }
}

/// Class sizes over every label present, and a warning for records whose label lies
/// outside the declared classes (training refuses them).
fn print_classes(out: &mut String, ds: &Dataset) {
    let counts = crate::tools::consistency::label_counts(ds);
    let mut sizes: Vec<usize> = counts.values().map(|c| c.0).collect();
    sizes.sort_unstable();
    if let (Some(min), Some(max)) = (sizes.first(), sizes.last()) {
        let median = crate::stats::median(&sizes.iter().map(|&c| c as f64).collect::<Vec<_>>());
        let _ = writeln!(
            out,
            "records per class: min {min} median {median} max {max} ({} of {} classes present)",
            counts.len(),
            ds.num_classes
        );
    }
    let outside: Vec<_> = counts.iter().filter(|(&l, _)| l as usize >= ds.num_classes).collect();
    if let Some((label, (_, (s, i)))) = outside.first() {
        let records: usize = outside.iter().map(|(_, c)| c.0).sum();
        let from = ds.classes_from.as_ref().map_or("the dataset".to_string(), |p| p.display().to_string());
        let _ = writeln!(out, "WARNING: {records} records carry {} labels outside the {} classes {from} declares (first: label {label} at {}); run `trainer verify`", outside.len(), ds.num_classes, ds.shards[*s].describe(*i));
    }
}

fn print_attributes(out: &mut String, ds: &Dataset) {
    let histogram = |col: &dyn Fn(&crate::reader::Shard) -> &[i8]| {
        let mut h = std::collections::BTreeMap::<i8, usize>::new();
        for s in &ds.shards {
            for &v in col(s) {
                *h.entry(v).or_default() += 1;
            }
        }
        h.iter()
            .map(|(v, n)| if *v < 0 { format!("unknown:{n}") } else { format!("{v}:{n}") })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = writeln!(out, "gender {}", histogram(&|s| s.genders()));
    let _ = writeln!(out, "age    {}", histogram(&|s| s.ages()));
}

/// Which tasks the dataset can serve, and the column each would read its class from, as
/// `trainer train` decides it: for a set given for that task alone (`gender=DIR/NAME`), and
/// for one shared by tasks.
fn print_tasks(out: &mut String, ds: &Dataset, path: &std::path::Path) {
    let stats = crate::pipeline::partition::column_stats(ds);
    let spec = SetSpec { head: None, path: path.to_path_buf(), column: None };
    let known = |c: Column| match stats.of(c) {
        (0, _) => "none known".to_string(),
        (n, max) => format!("{n} of {} known, classes 0..={max}", stats.records),
    };
    let describe = |c: Column| format!("{:<6} {}", c.name(), known(c));
    let mut serves = vec![];
    if stats.of(Column::Label).0 > 0 {
        serves.push(Head::Fr.name());
    }
    let mut lines = vec![format!("  {:<6}  {}", Head::Fr.name(), describe(Column::Label))];
    for head in [Head::Gender, Head::Age] {
        let (alone, shared) = (resolve_column(&spec, head, true, &stats), resolve_column(&spec, head, false, &stats));
        if let Some(why) = cannot_serve(head, alone, &stats) {
            lines.push(format!("  {:<6}  cannot: {why}", head.name()));
            continue;
        }
        serves.push(head.name());
        let note = if shared == alone {
            String::new()
        } else {
            format!("  (as {}=DIR/NAME; shared with other tasks: {} {})", head.key(), shared.name(), known(shared))
        };
        lines.push(format!("  {:<6}  {}{note}", head.name(), describe(alone)));
    }
    let serves = if serves.is_empty() { "none".to_string() } else { serves.join(", ") };
    let _ = writeln!(out, "tasks it can serve: {serves} (the column each reads its class from):");
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
}

/// Why `head` cannot learn from this dataset's `column`, if it cannot: nothing known, or
/// `label` read for want of the head's own column holding more classes than the head has
/// by default (identities, not genders or age buckets; `@label` still reads it).
fn cannot_serve(head: Head, column: Column, stats: &crate::targets::ColumnStats) -> Option<String> {
    let (known, max) = stats.of(column);
    if known == 0 {
        return Some(format!("`{}` is unknown for all {} records", column.name(), stats.records));
    }
    let classes = match head {
        Head::Gender => crate::settings::GENDER_CLASSES,
        Head::Age => crate::settings::AGE_CLASSES,
        Head::Fr => return None,
    };
    (column == Column::Label && max >= classes as i64).then(|| {
        format!(
            "no `{}` column is known, and `label` holds classes 0..={max}, more than {}'s {classes} \
             (identities; {}=DIR/NAME@label would read them anyway)",
            head.own_column().name(),
            head.name(),
            head.key()
        )
    })
}

fn print_sidecars(out: &mut String, layout: &Layout, ds: &Dataset) {
    let labels = layout.labels_path();
    let _ = writeln!(
        out,
        "labels table: {}",
        if labels.is_file() { labels.display().to_string() } else { "none (classes = max label + 1)".into() }
    );
    match Manifest::load(&layout.manifest_path()) {
        Ok(m) => {
            let agrees = m.num_records == ds.len() && m.num_shards == ds.total_shards;
            let _ = writeln!(
                out,
                "manifest: {} records, {} skipped at pack time, settings {}{}",
                m.num_records,
                m.skipped,
                m.settings,
                if agrees { "" } else { "  (DISAGREES with the shards: run `trainer verify`)" }
            );
        }
        Err(_) if !layout.manifest_path().exists() => {
            let _ = writeln!(out, "manifest: none");
        }
        Err(e) => {
            let _ = writeln!(out, "manifest: unreadable: {e:#}");
        }
    }
}

fn print_head(out: &mut String, ds: &Dataset, n: usize) {
    let mut left = n;
    for s in &ds.shards {
        for i in 0..s.len().min(left) {
            let (start, end) = s.index().range(i);
            let crc = s.checksum(i).map_or("-".to_string(), |c| format!("{c:08x}"));
            let r = &s.index().cols;
            let _ = writeln!(
                out,
                "{}[{i}]\t{}\tlabel {}\t{} bytes\tgender {}\tage {}\tcrc32c {crc}",
                s.k(),
                s.path_of(i),
                r.labels[i],
                end - start,
                r.genders[i],
                r.ages[i]
            );
        }
        left -= s.len().min(left);
    }
    if n > 0 && ds.shards.first().is_some_and(|s| s.version() == Version::Legacy) {
        let _ = writeln!(out, "(seed format: no gender, age or checksum columns)");
    }
}
