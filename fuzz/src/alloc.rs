//! The global allocator of the fuzz targets: the system's, refusing to hold more than
//! [`LIMIT`] bytes at once. A refused allocation aborts the process (`handle_alloc_error`)
//! unless the code asked fallibly, so a length taken from the input and allocated before
//! it is checked is a crash here, not a slow run that the machine survives.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Most bytes live at once: far above what any target needs (the NBD server holds at most
/// 128 MiB of payloads in flight, and the targets' exports and inputs are small).
pub const LIMIT: usize = 1 << 30;

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// [`System`] with a cap on live bytes.
pub struct Capped;

impl Capped {
    /// Counts `size` more bytes live, unless that passes [`LIMIT`].
    fn take(size: usize) -> bool {
        let before = LIVE.fetch_add(size, Ordering::Relaxed);
        if before.saturating_add(size) > LIMIT {
            LIVE.fetch_sub(size, Ordering::Relaxed);
            return false;
        }
        true
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, and
// only counts sizes; a refusal returns null, which `GlobalAlloc` allows.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Capped::take(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's layout, passed on as `GlobalAlloc::alloc` requires.
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Capped::take(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through this allocator) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old && !Capped::take(new_size - old) {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` was allocated by `System` with `layout`; `new_size` is the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            if new_size > old {
                LIVE.fetch_sub(new_size - old, Ordering::Relaxed);
            }
        } else if new_size < old {
            LIVE.fetch_sub(old - new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static CAPPED: Capped = Capped;
