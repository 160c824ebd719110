//! Watching a run from outside the training loop: TensorBoard event files (`tensorboard`:
//! the writer rank 0 uses under `--tensorboard`, a reader that checks every CRC, and
//! `RunScalars`, which turns `log.txt` events into scalars) and `trainer plot` (`plot`:
//! curves of one or more runs' `log.txt` as PNG or SVG).

pub mod plot;
pub mod tensorboard;
