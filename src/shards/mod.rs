//! The sharded bin/idx dataset format (see `shards/FORMAT.md`) and its memory-mapped reader.

pub mod inspect;
pub mod unpack;
pub mod verify;
