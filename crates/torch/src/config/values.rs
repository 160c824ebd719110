//! Parsers of the settings whose value is more than one number (`--pk 30x5`,
//! `--loss-weights 1,0.5,0.5`), and the checks they share with values from a recipe.

use trainer_data::bounds;

pub fn parse_pk(s: &str) -> Result<[usize; 2], String> {
    let (p, k) = s.split_once(['x', 'X']).ok_or("expected PxK, e.g. 30x5")?;
    let num = |v: &str| v.trim().parse::<usize>().map_err(|e| format!("{v:?}: {e}"));
    let pk = [num(p)?, num(k)?];
    check_pk(pk)?;
    Ok(pk)
}

/// P identities and K images each: both at least 1, and a batch of P×K that fits.
pub fn check_pk([p, k]: [usize; 2]) -> Result<(), String> {
    let batch = p.checked_mul(k).filter(|&b| p >= 1 && k >= 1 && b as u64 <= bounds::MAX_BATCH);
    batch
        .map(|_| ())
        .ok_or_else(|| format!("P and K must be at least 1 and P×K at most {}, got {p}x{k}", bounds::MAX_BATCH))
}

pub fn parse_weights(s: &str) -> Result<[f64; 3], String> {
    let parts: Vec<&str> = s.split(',').collect();
    let [fr, gender, age] = parts.as_slice() else {
        return Err("expected three weights FR,Gender,Age, e.g. 1,0.5,0.5".into());
    };
    let num = |v: &str| v.trim().parse::<f64>().map_err(|e| format!("{v:?}: {e}"));
    let w = [num(fr)?, num(gender)?, num(age)?];
    check_weights(w)?;
    Ok(w)
}

/// Loss weights: finite, at least 0, at most 1000, not all 0.
pub fn check_weights(w: [f64; 3]) -> Result<(), String> {
    let fine = w.iter().all(|x| x.is_finite() && (0.0..=1000.0).contains(x)) && w.iter().any(|&x| x > 0.0);
    fine.then_some(()).ok_or_else(|| format!("weights must be finite, in [0, 1000] and not all 0, got {w:?}"))
}
