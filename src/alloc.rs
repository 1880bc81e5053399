//! The process's allocator: mimalloc, called through its plain entry points for ordinary
//! alignments.
//!
//! mimalloc instead of the system allocator: every republication frees the previous routing
//! table and allocates the next (megabytes for a 10,000-member pool), and glibc hands such
//! blocks back to the kernel only to fault them in again on the next change, which doubled the
//! controller's cost per changed EndpointSlice (bench/README.md).
//!
//! Not the `mimalloc` crate's allocator: it sends every allocation through
//! `mi_malloc_aligned`, whose fast path serves only blocks up to 1 KiB whose page has a free,
//! aligned block. Every other block except the 2 and 4 KiB classes (hyper's 8 KiB read
//! buffer, a request's future, a small block whose page had none free) then took mimalloc's
//! over-allocating path, about four times per proxied request; calling `mi_malloc` instead
//! saves about 800 of a sticky request's 30,000 user-space instructions (callgrind,
//! bench/README.md). Every mimalloc block is aligned to the word (its sizes are whole words,
//! its pages aligned), so an alignment up to the word needs no aligned call; larger ones still
//! make it. (Not 16: there are 24-byte blocks. mimalloc's guarded debug mode would break the
//! word alignment too; it is built only with libmimalloc-sys's `debug` features, never here.)
//!
//! And no transparent huge pages for the process ([`no_huge_pages`]), which mimalloc would
//! otherwise ask for.
//!
//! Its tests (`blocks_are_aligned_and_keep_their_bytes`,
//! `huge_pages_are_off_unless_mimalloc_is_asked_for_them`) are in src/main.rs: the Rust benches
//! include this file too, and a test module here would be an unused one there.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Turns transparent huge pages off for this process, unless `MIMALLOC_ALLOW_THP` is set (its
/// name in any case, as mimalloc reads it): then mimalloc's own reading of it rules. mimalloc
/// asks the kernel for 2 MiB pages for its arenas, and the kernel clears each such page in one
/// go at its first touch, inside whatever request or log write touched it, while every
/// connection on the worker waits: tens of milliseconds in a fresh process's first seconds on
/// the test VM (bench/README.md, 2026-12-05). A proxy's heap is tens of MB, small enough that
/// 4 KiB pages cost no measurable CPU there. Called first in `main`, which logs what it did once
/// logging is up, and in the Rust benches so their figures stay the binary's.
pub fn no_huge_pages() -> HugePages {
    let asked = std::env::vars_os().find(|(k, _)| k.eq_ignore_ascii_case("MIMALLOC_ALLOW_THP"));
    no_huge_pages_unless(asked.as_ref().map(|(_, v)| v.as_os_str()))
}

/// What [`no_huge_pages`] did.
#[derive(Debug)]
pub enum HugePages {
    /// Off for the process.
    Off,
    /// Left to mimalloc: `MIMALLOC_ALLOW_THP` was set, to this.
    LeftToMimalloc(std::ffi::OsString),
    /// The kernel refused (before 3.15, or a sandbox that filters prctl): its own policy stays.
    Refused(std::io::Error),
}

/// In words, after "transparent huge pages": for the benches' output.
impl std::fmt::Display for HugePages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HugePages::Off => f.write_str("off"),
            HugePages::LeftToMimalloc(v) => write!(f, "left to mimalloc: MIMALLOC_ALLOW_THP={v:?}"),
            HugePages::Refused(e) => write!(f, "not turned off: {e}"),
        }
    }
}

/// [`no_huge_pages`] with the variable's value given, for its test.
pub fn no_huge_pages_unless(mimalloc_allow_thp: Option<&std::ffi::OsStr>) -> HugePages {
    if let Some(v) = mimalloc_allow_thp {
        return HugePages::LeftToMimalloc(v.to_owned());
    }
    // (3.15-4.12 accept it but let a later madvise(MADV_HUGEPAGE) of mimalloc's win; 4.13 and
    // later do not.)
    match rustix::thread::disable_transparent_huge_pages(true) {
        Ok(()) => HugePages::Off,
        Err(e) => HugePages::Refused(e.into()),
    }
}

/// The largest alignment every mimalloc block has.
const WORD: usize = std::mem::size_of::<usize>();

/// mimalloc as the global allocator.
pub struct Allocator;

// SAFETY: each method forwards to the mimalloc call with the same contract (the aligned one
// whenever the alignment is above what every block has); `dealloc` and `realloc` take only
// pointers these methods returned, which `mi_free` and `mi_realloc*` accept.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: see the impl.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}
