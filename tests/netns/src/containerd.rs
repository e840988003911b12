//! containerd helpers (filled in below).
