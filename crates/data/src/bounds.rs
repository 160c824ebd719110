//! Value parsers for every numeric flag of every command, in one place so the same
//! bounds hold on the command line and (through `check_value`) for recipe keys. A value
//! that makes no sense (zero steps, a negative time-out, NaN, a count that would allocate
//! the machine away) is refused before any work starts: clap reports it with the flag's
//! name and exit status 2.

/// A whole number in `lo..=hi` (usize, u64, u32...).
pub fn int<T>(lo: u64, hi: u64) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
{
    move |s: &str| {
        let n = s.trim().parse::<u64>().ok().filter(|n| (lo..=hi).contains(n));
        n.and_then(|n| T::try_from(n).ok()).ok_or_else(|| format!("expected a whole number in {lo}..={hi}, got {s:?}"))
    }
}

/// A count of at least 1 (steps, batches, images, shards...), at most `hi`.
pub fn count<T>(hi: u64) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
{
    int(1, hi)
}

/// A finite real number in `lo..=hi`, excluding `lo` itself when `open_lo`.
pub fn real(lo: f64, hi: f64, open_lo: bool) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let ok = |x: f64| x.is_finite() && x <= hi && if open_lo { x > lo } else { x >= lo };
        let left = if open_lo { '(' } else { '[' };
        s.trim()
            .parse::<f64>()
            .ok()
            .filter(|&x| ok(x))
            .ok_or_else(|| format!("expected a finite number in {left}{lo}, {hi}], got {s:?}"))
    }
}

/// A finite real number in `lo..hi` (a probability that must leave something, an angle
/// short of a half turn).
pub fn below(lo: f64, hi: f64) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let x = s.trim().parse::<f64>().ok().filter(|&x| x.is_finite() && x >= lo && x < hi);
        x.ok_or_else(|| format!("expected a finite number in [{lo}, {hi}), got {s:?}"))
    }
}

/// Strictly between 0 and 1 (a factor that must shrink, and not to nothing).
pub fn open_unit(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|&x| x > 0.0 && x < 1.0)
        .ok_or_else(|| format!("expected a number in (0, 1), got {s:?}"))
}

/// Above zero, at most `hi` (learning rates, scales, sizes in MiB).
pub fn positive(hi: f64) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    real(0.0, hi, true)
}

/// A time-out or time limit in seconds: above zero, at most a year.
pub fn seconds(s: &str) -> Result<f64, String> {
    real(0.0, YEAR_S, true)(s)
}

pub const YEAR_S: f64 = 365.0 * 86400.0;
/// Threads per process (decoders, libtorch): more than this is a typo.
pub const MAX_THREADS: u64 = 1024;
/// Images per batch per rank.
pub const MAX_BATCH: u64 = 1 << 20;
/// Image side in pixels.
pub const MAX_SIDE: u64 = 8192;
/// Step counts and intervals.
pub const MAX_STEPS: u64 = 1 << 53;

/// Runs `arg`'s own value parser on a value that came from elsewhere (a recipe key), so
/// both sources meet one rule. `Err` holds the parser's message.
pub fn check_value(arg: &clap::Arg, value: &str) -> Result<(), String> {
    let Some(long) = arg.get_long() else { return Ok(()) };
    let mut one = arg.clone().required(false);
    if arg.get_value_delimiter().is_some() {
        one = one.value_delimiter(None);
    }
    let cmd = clap::Command::new("recipe").no_binary_name(true).arg(one);
    cmd.try_get_matches_from([format!("--{long}={value}")]).map(|_| ()).map_err(|e| {
        let text = e.to_string();
        text.lines().next().unwrap_or("").trim_start_matches("error: ").to_string()
    })
}

/// Lets a negative number be a flag's value on every (sub)command, so `--timeout -1`
/// meets the flag's own parser and message rather than "unexpected argument '-1'".
pub fn negative_numbers_as_values(cmd: clap::Command) -> clap::Command {
    let names: Vec<String> = cmd.get_subcommands().map(|c| c.get_name().to_string()).collect();
    names
        .into_iter()
        .fold(cmd.allow_negative_numbers(true), |cmd, name| cmd.mut_subcommand(name, negative_numbers_as_values))
}

/// `TRAINER_PARSE_ONLY=1`: both binaries parse their arguments with these command trees and
/// stop, so `launch/doc-check.sh` can check every command the docs show without running it.
pub fn parse_only() -> bool {
    std::env::var_os("TRAINER_PARSE_ONLY").is_some_and(|v| v == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_refuse_zero_negative_and_junk() {
        let c = count::<usize>(100);
        assert_eq!(c("5"), Ok(5));
        for bad in ["0", "-1", "nan", "inf", "1e30", "", "101", "2.5"] {
            assert!(c(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn reals_refuse_non_finite_and_out_of_range() {
        let p = positive(10.0);
        assert_eq!(p("0.5"), Ok(0.5));
        for bad in ["0", "-1", "nan", "NaN", "inf", "-inf", "1e30", "", "x"] {
            assert!(p(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(real(0.0, 1.0, false)("0"), Ok(0.0));
        assert!(seconds("1e30").is_err() && seconds("-1").is_err() && seconds("0.5").is_ok());
    }

    #[test]
    fn recipe_values_meet_the_flags_rule() {
        let arg = clap::Arg::new("iters").long("iters").value_parser(count::<usize>(10));
        assert!(check_value(&arg, "3").is_ok());
        let msg = check_value(&arg, "0").unwrap_err();
        assert!(msg.contains("1..=10"), "{msg}");
    }
}
