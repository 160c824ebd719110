//! Configs written before the sections: one flat table (`lr = 0.1`, `[heads]` apart).
//! Each flat key moves into the section that holds it now; a key no section holds stays
//! where it is, for serde to refuse by name.

use serde_json::{Map, Value};
use std::sync::OnceLock;

use super::TrainConfig;

/// `value` in sections, and whether it was flat.
pub fn sectioned(value: Value) -> (Value, bool) {
    let Value::Object(top) = value else { return (value, false) };
    let sections = section_of_key();
    let mut out = Map::new();
    let mut was_flat = false;
    for (key, v) in top {
        match sections.get(key.as_str()) {
            // `schedule = "poly"` is the flat key; `[schedule]` the section of that name.
            Some(section) if !(is_section(&key) && v.is_object()) => {
                was_flat = true;
                let table = out.entry(section.clone()).or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(t) = table {
                    t.insert(key, v);
                }
            }
            _ => merge_section(&mut out, key, v),
        }
    }
    (Value::Object(out), was_flat)
}

/// A section table may meet keys already moved into it from the flat part.
fn merge_section(out: &mut Map<String, Value>, key: String, v: Value) {
    match (out.get_mut(&key), v) {
        (Some(Value::Object(have)), Value::Object(more)) => have.extend(more),
        (_, v) => {
            out.insert(key, v);
        }
    }
}

fn is_section(key: &str) -> bool {
    defaults().get(key).is_some_and(Value::is_object)
}

fn defaults() -> &'static Map<String, Value> {
    static DEFAULTS: OnceLock<Map<String, Value>> = OnceLock::new();
    DEFAULTS.get_or_init(|| match serde_json::to_value(TrainConfig::default()) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    })
}

/// Every setting's key → its section's name.
fn section_of_key() -> &'static std::collections::HashMap<String, String> {
    static INDEX: OnceLock<std::collections::HashMap<String, String>> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut index = std::collections::HashMap::new();
        for (section, table) in defaults() {
            for key in table.as_object().into_iter().flat_map(Map::keys) {
                index.insert(key.clone(), section.clone());
            }
        }
        index
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flat_keys_move_to_their_sections_and_unknown_keys_stay() {
        let flat = json!({"task": "Gender", "lr": 0.5, "max_steps": 7, "schedule": "poly", "heads": {"emb_dim": 128}, "typo": 1});
        let (nested, was_flat) = sectioned(flat);
        assert!(was_flat);
        assert_eq!(
            nested,
            json!({"model": {"task": "Gender"}, "optim": {"lr": 0.5}, "schedule": {"max_steps": 7, "schedule": "poly"},
                   "heads": {"emb_dim": 128}, "typo": 1})
        );
        let again = sectioned(nested.clone());
        assert_eq!(again, (nested, false), "a sectioned config is left as it is");
    }
}
