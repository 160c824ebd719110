//! Recipe values meet the same bounds as the flags: each key's value is run through its
//! flag's own clap value parser (`trainer_data::bounds`), so `batch_size = 0` in a TOML
//! file is refused with the same words as `--batch-size 0`.

use anyhow::{bail, Result};

/// Checks every scalar value (and each element of a list the flag splits at commas) of
/// `recipe`'s section tables against the flag of `cmd` with the key's name. Unknown keys
/// are left to serde's own error.
pub fn check(recipe: &toml::Table, cmd: &clap::Command) -> Result<()> {
    let sections = recipe.iter().filter_map(|(name, v)| Some((name, v.as_table()?)));
    for (section, table) in sections {
        for (key, value) in table {
            let Some(arg) = cmd.get_arguments().find(|a| a.get_id().as_str() == key) else { continue };
            for text in texts(value, arg.get_value_delimiter().is_some()) {
                if let Err(msg) = trainer_data::bounds::check_value(arg, &text) {
                    bail!("[{section}] {key} = {value}: {msg}");
                }
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
    use crate::train::TrainConfig;
    use clap::Args;

    fn check_text(text: &str) -> Result<()> {
        check(&text.parse::<toml::Table>().unwrap(), &TrainConfig::augment_args(clap::Command::new("train")))
    }

    #[test]
    fn recipe_values_out_of_bounds_are_refused_naming_the_key() {
        for bad in [
            "[data]\nbatch_size = 0",
            "[comm]\ncollective_timeout = -1.0",
            "[optim]\nlr = nan",
            "[optim]\nlr = inf",
            "[schedule]\ntime_limit = 1e30",
            "[data]\nworkers = 0",
            "[heads]\nfr_dropout = 1.0",
        ] {
            let msg = format!("{:#}", check_text(bad).unwrap_err());
            let key = bad.split('\n').nth(1).unwrap().split(' ').next().unwrap();
            assert!(msg.contains(&format!("] {key} = ")), "{bad}: {msg}");
        }
        check_text("[data]\nbatch_size = 8\ntrain_sets = ['a']\n[optim]\nlr = 0.5\n[heads]\nemb_dim = 128").unwrap();
    }
}
