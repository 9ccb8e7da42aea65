//! Server-side QUIC connection migration (seed 000) on quinn-proto: in progress.
