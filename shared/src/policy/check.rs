//! Range checks the policies' `validate` methods share. Each returns `Err((field, message))`
//! with the field's name inside the policy's parameters.

/// A finite number within `min..=max`.
pub fn within(field: &str, v: f64, min: f64, max: f64) -> Result<(), (String, String)> {
    if v.is_finite() && (min..=max).contains(&v) {
        Ok(())
    } else {
        Err((field.to_owned(), format!("must be within {min}..={max}")))
    }
}

/// A finite number of at least 1 (load factors, relative thresholds).
pub fn ratio(field: &str, v: f64) -> Result<(), (String, String)> {
    within(field, v, 1.0, 1e6)
}

/// A finite, non-negative number (weights).
pub fn non_negative(field: &str, v: f64) -> Result<(), (String, String)> {
    within(field, v, 0.0, 1e6)
}

/// An integer within `min..=max`.
pub fn count(field: &str, v: u64, min: u64, max: u64) -> Result<(), (String, String)> {
    if (min..=max).contains(&v) {
        Ok(())
    } else {
        Err((field.to_owned(), format!("must be within {min}..={max}")))
    }
}

/// A hash ring's `virtual_nodes` and bounded-load `load_factor`.
pub fn ring(virtual_nodes: u32, load_factor: f64) -> Result<(), (String, String)> {
    count(
        "virtual_nodes",
        u64::from(virtual_nodes),
        1,
        MAX_VIRTUAL_NODES,
    )?;
    ratio("load_factor", load_factor)
}

/// A prefix index's memory bound (`max_index_bytes`).
pub fn index_bytes(v: usize) -> Result<(), (String, String)> {
    count("max_index_bytes", v as u64, MIN_INDEX_BYTES, u64::MAX)
}

/// Smallest prefix-index memory bound.
pub const MIN_INDEX_BYTES: u64 = 64 * 1024;
/// Largest virtual-node count per worker on a hash ring.
pub const MAX_VIRTUAL_NODES: u64 = 10_000;
