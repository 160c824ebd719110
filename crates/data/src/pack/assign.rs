//! Which shard each record goes to, deterministic for a seed.
//!
//! Dealing: each label's records (shuffled) are laid end to end in a shuffled label order and
//! dealt round-robin, so shard sizes differ by at most one and a label with c records puts
//! ⌊c/K⌋ or ⌈c/K⌉ of them in every shard. Grouping: whole labels go, largest first, to the
//! currently smallest shard.

use crate::rng::Rng;
use std::collections::BTreeMap;

/// Per shard, the indices into `labels` in write order.
pub fn assign(labels: &[u32], shards: usize, seed: u64, group_by_label: bool) -> Vec<Vec<usize>> {
    let shards = shards.max(1);
    let mut groups = label_groups(labels, seed);
    Rng::derive(seed, 2, 0).shuffle(&mut groups);
    let mut out = if group_by_label { pack_groups(groups, shards) } else { deal(groups, shards) };
    for (k, shard) in out.iter_mut().enumerate() {
        Rng::derive(seed, 3, k as u64).shuffle(shard);
    }
    out
}

/// Record indices per label, each group shuffled with its own stream.
fn label_groups(labels: &[u32], seed: u64) -> Vec<Vec<usize>> {
    let mut by_label: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, &l) in labels.iter().enumerate() {
        by_label.entry(l).or_default().push(i);
    }
    by_label
        .into_iter()
        .map(|(label, mut idx)| {
            Rng::derive(seed, 1, label as u64).shuffle(&mut idx);
            idx
        })
        .collect()
}

fn deal(groups: Vec<Vec<usize>>, shards: usize) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); shards];
    for (j, i) in groups.into_iter().flatten().enumerate() {
        out[j % shards].push(i);
    }
    out
}

fn pack_groups(mut groups: Vec<Vec<usize>>, shards: usize) -> Vec<Vec<usize>> {
    groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); shards];
    for g in groups {
        let k = (0..shards).min_by_key(|&k| (out[k].len(), k)).unwrap_or(0);
        out[k].extend(g);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(rng: &mut Rng, n: usize, classes: usize) -> Vec<u32> {
        (0..n).map(|_| rng.below(classes) as u32).collect()
    }

    fn is_permutation(out: &[Vec<usize>], n: usize) -> bool {
        let mut all: Vec<usize> = out.iter().flatten().copied().collect();
        all.sort_unstable();
        all == (0..n).collect::<Vec<_>>()
    }

    #[test]
    fn dealing_balances_shards_and_spreads_labels() {
        let mut rng = Rng::new(11);
        for (n, classes, k) in [(1000, 37, 8), (17, 3, 5), (3, 1, 8), (500, 500, 7)] {
            let ls = labels(&mut rng, n, classes);
            let out = assign(&ls, k, 42, false);
            assert!(is_permutation(&out, n));
            let sizes: Vec<usize> = out.iter().map(Vec::len).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
            for c in 0..classes as u32 {
                let total = ls.iter().filter(|&&l| l == c).count();
                for shard in &out {
                    let here = shard.iter().filter(|&&i| ls[i] == c).count();
                    assert!(
                        here == total / k || here == total.div_ceil(k),
                        "label {c}: {here} of {total} in one of {k} shards"
                    );
                }
            }
        }
    }

    #[test]
    fn seeded_and_deterministic() {
        let ls = labels(&mut Rng::new(1), 300, 10);
        assert_eq!(assign(&ls, 4, 7, false), assign(&ls, 4, 7, false));
        assert_ne!(assign(&ls, 4, 7, false), assign(&ls, 4, 8, false));
    }

    #[test]
    fn grouping_keeps_each_label_in_one_shard() {
        let ls = labels(&mut Rng::new(2), 400, 23);
        let out = assign(&ls, 4, 3, true);
        assert!(is_permutation(&out, ls.len()));
        for c in 0..23u32 {
            let holders = out.iter().filter(|s| s.iter().any(|&i| ls[i] == c)).count();
            assert!(holders <= 1, "label {c} in {holders} shards");
        }
        let biggest = (0..23u32).map(|c| ls.iter().filter(|&&l| l == c).count()).max().unwrap();
        let sizes: Vec<usize> = out.iter().map(Vec::len).collect();
        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= biggest, "{sizes:?}");
    }
}
