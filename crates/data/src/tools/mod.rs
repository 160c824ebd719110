//! The dataset tools behind `trainer inspect`, `verify` and `unpack`: each returns what it
//! found, and the command line prints it.

pub mod consistency;
pub mod inspect;
pub mod unpack;
pub mod verify;
