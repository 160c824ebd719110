//! Image bytes ↔ pixels, below both the packer and the training pipeline: decoding (with
//! libjpeg-turbo's DCT scaling), resizing, and normalising into a training slot; and the
//! 5-point face alignment that `pack --align` applies.

pub mod align;
pub mod decode;

pub use decode::{decode_rgb_into, Decoder};
