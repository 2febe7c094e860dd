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

/// Smallest prefix-index memory bound.
pub const MIN_INDEX_BYTES: u64 = 64 * 1024;
/// Largest virtual-node count per worker on a hash ring.
pub const MAX_VIRTUAL_NODES: u64 = 10_000;
