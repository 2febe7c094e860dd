//! Chat prompt rendering (placeholder being replaced).
