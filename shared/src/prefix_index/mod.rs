//! The approximate prefix index (placeholder being replaced).
