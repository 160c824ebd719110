//! Communication backends behind one interface: single process, MPI (CPU), NCCL (CUDA).
