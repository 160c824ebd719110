//! Other tools' file formats, read and written without them: MXNet RecordIO (insightface's
//! `train.rec`/`train.idx`/`property` training sets), insightface's verification pair sets
//! (`lfw.bin` and the like, pickles read by a strict Rust unpickler), NumPy's `.npy`
//! (what `trainer embed` writes) and PyTorch's `torch.save` state dicts (arcface_torch's
//! `backbone.pth`); `model_files` tells such files apart. Every reader returns errors, never panics, on damaged or hostile input.

pub mod model_files;
pub mod npy;
pub mod pairs;
mod pickle;
pub mod recordio;
pub mod torch_save;
