//! trainer's data half: everything that runs without libtorch, in the order data meets it.
//!
//! `format` (the on-disk spec, `shards/FORMAT.md`) → `reader` (memory-mapped shards) →
//! `codec` (image bytes ↔ pixels, 5-point alignment) → `pack` / `synth` (writing datasets;
//! `interop` reads MXNet RecordIO, insightface pair sets, writes `.npy`) and `tools`
//! (inspect, verify, unpack) → `pipeline` (sampling, decoding, batching). Beside them:
//! `plateau` (dlib's learning-rate rule), `metrics` (verification, Gap, confusion),
//! `bench` (pipeline and plateau benchmarks), `watch` (TensorBoard event files and
//! `trainer plot`, both read from or mirroring a run's `log.txt`), and the small shared
//! pieces `rng`, `stats` and `term`. The libtorch half (`trainer-torch`) builds on this
//! crate; this crate cannot reach it.

pub mod bench;
pub mod bounds;
pub mod codec;
pub mod format;
pub mod interop;
pub mod metrics;
pub mod output;
pub mod pack;
pub mod pipeline;
pub mod plateau;
pub mod reader;
pub mod rng;
pub mod settings;
pub mod sidefile;
pub mod stats;
pub mod synth;
pub mod targets;
pub mod term;
pub mod tools;
pub mod watch;
