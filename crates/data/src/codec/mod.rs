//! Image bytes ↔ pixels, below both the packer and the training pipeline: decoding (with
//! libjpeg-turbo's DCT scaling) and resizing into a u8 training slot, and the rule that
//! normalises it (`normalise`); the one rule that decides an image is damaged (`check`);
//! and the 5-point face alignment that `pack --align` applies.

pub mod align;
pub mod check;
pub mod decode;
pub mod normalise;

pub use check::{check_complete, MAX_SIDE};
pub use decode::{check_decodes, decode_rgb_into, Decoder};
