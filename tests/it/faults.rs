//! Fault injection: the real binary with things broken around it.

mod worker_frames;
