//! Image bytes ↔ pixels, below both the packer and the training pipeline: decoding (with
//! libjpeg-turbo's DCT scaling), resizing, and normalising into a training slot; the one
//! rule that decides an image is damaged (`check`); and the 5-point face alignment that
//! `pack --align` applies.

pub mod align;
pub mod check;
pub mod decode;

pub use check::{check_complete, MAX_SIDE};
pub use decode::{check_decodes, decode_rgb_into, Decoder};
