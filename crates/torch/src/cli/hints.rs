//! Flags other trainers' users type that mean something else here: clap's own "a similar
//! argument exists" picks by spelling, so `--fp16` alone would lead an arcface_torch user
//! (whose `fp16 = True` is mixed precision) to gradient compression.

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// An unknown flag → what its users mean by it here.
const MEANT: &[(&str, &str)] = &[(
    "--fp16",
    "for mixed precision (arcface_torch's `fp16 = True`) use '--amp'; '--fp16-allreduce' only sends the ranks' \
     gradients as fp16",
)];

/// Adds the tip for a known foreign flag to an unknown-argument error.
pub fn with_hints(mut e: clap::Error) -> clap::Error {
    if e.kind() != ErrorKind::UnknownArgument {
        return e;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else { return e };
    let flag = arg.split('=').next().unwrap_or_default().to_string();
    if let Some((_, tip)) = MEANT.iter().find(|(f, _)| *f == flag) {
        e.insert(ContextKind::Suggested, ContextValue::StyledStrs(vec![(*tip).into()]));
    }
    e
}

#[cfg(test)]
mod tests {
    #[test]
    fn fp16_points_to_amp() {
        let e = super::super::command().try_get_matches_from(["trainer", "train", "FR", "--fp16"]).unwrap_err();
        let shown = super::with_hints(e).render().to_string();
        assert!(shown.contains("use '--amp'") && shown.contains("'--fp16-allreduce'"), "{shown}");
    }
}
