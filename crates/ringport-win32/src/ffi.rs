//! The FFI boundary: no panic crosses it.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{self, code};

/// Runs `f`; if it panics, sets `ERROR_INVALID_FUNCTION` and returns
/// `failed` instead of unwinding into C.
pub fn guard<R>(failed: R, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            error::set(code::ERROR_INVALID_FUNCTION);
            failed
        }
    }
}
