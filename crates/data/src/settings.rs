//! Settings structs declare each default once, in their clap attribute; `clap_defaults`
//! turns those declarations into a value, so `Default`, serde's missing keys and the
//! command line can never disagree.

/// A settings struct with every field at the default its clap attribute declares.
pub fn clap_defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("defaults").no_binary_name(true));
    let matches =
        cmd.try_get_matches_from(std::iter::empty::<&str>()).expect("every setting has a default or is optional");
    T::from_arg_matches(&matches).expect("defaults parse into their own struct")
}

/// `--gender-classes`' default: what a Gender label can be.
pub const GENDER_CLASSES: usize = 2;
/// `--age-classes`' default: the seed's 7 age buckets.
pub const AGE_CLASSES: usize = 7;
