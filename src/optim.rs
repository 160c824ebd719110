//! SGD with momentum and per-group weight decay, its state held in tensors we own (so a
//! checkpoint restores it exactly).
