//! Recipe values meet the same bounds as the flags: each key's value is run through its
//! flag's own clap value parser (`trainer_data::bounds`), so `batch_size = 0` in a TOML
//! file is refused with the same words as `--batch-size 0`.

use anyhow::{bail, Result};
use clap::Args;

use super::config::TrainConfig;

/// Checks every scalar value (and each element of a list the flag splits at commas) of
/// `recipe`, its `[heads]` table included. Unknown keys are left to serde's own error.
pub fn check(recipe: &toml::Table) -> Result<()> {
    let cmd = TrainConfig::augment_args(clap::Command::new("train"));
    let heads = recipe.get("heads").and_then(|v| v.as_table()).into_iter().flatten();
    for (key, value) in recipe.iter().chain(heads) {
        let Some(arg) = cmd.get_arguments().find(|a| a.get_id().as_str() == key) else { continue };
        for text in texts(value, arg.get_value_delimiter().is_some()) {
            if let Err(msg) = trainer_data::bounds::check_value(arg, &text) {
                bail!("{key} = {value}: {msg}");
            }
        }
    }
    Ok(())
}

/// The value as the command line would spell it; lists only where the flag takes lists.
fn texts(value: &toml::Value, list_flag: bool) -> Vec<String> {
    match value {
        toml::Value::Integer(i) => vec![i.to_string()],
        toml::Value::Float(f) => vec![f.to_string()],
        toml::Value::Array(items) if list_flag => items.iter().flat_map(|v| texts(v, false)).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_text(text: &str) -> Result<()> {
        check(&text.parse::<toml::Table>().unwrap())
    }

    #[test]
    fn recipe_values_out_of_bounds_are_refused_naming_the_key() {
        for bad in
            ["batch_size = 0", "collective_timeout = -1.0", "lr = nan", "lr = inf", "time_limit = 1e30", "workers = 0"]
        {
            let msg = format!("{:#}", check_text(bad).unwrap_err());
            assert!(msg.starts_with(bad.split(' ').next().unwrap()), "{bad}: {msg}");
        }
        check_text("batch_size = 8\nlr = 0.5\ntrain_sets = ['a']\n[heads]\nemb_dim = 128").unwrap();
    }
}
