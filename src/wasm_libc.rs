//! What the JPEG 2000 decoder (openjp2, a line-by-line Rust port of OpenJPEG) expects of a C
//! platform, for `wasm32-unknown-unknown`, which has no C library:
//! - the five C functions it calls through `extern "C"`: `malloc`, `calloc`, `realloc`, `free`
//!   and `strcpy`. Native targets take them from the system's C library; without these
//!   definitions the module would import them from an `env` that no browser provides. They are
//!   built on Rust's global allocator: each block carries its size in a 16-byte header in front
//!   of the pointer handed out, which `free` and `realloc` need to rebuild the block's layout;
//! - a global allocator that, like C's `free`, ignores a null pointer: openjp2 0.6 deallocates
//!   each code block's `decoded_data` whether or not it was ever allocated, which the system
//!   allocator of native targets forgives and wasm's dlmalloc does not (a trap, "memory access
//!   out of bounds").
//!
//! (A library should have done this: openjp2 0.6 has no pure-Rust allocation option.)

use std::alloc::{GlobalAlloc, Layout, System, alloc, alloc_zeroed, dealloc, realloc as grow};
use std::ffi::c_void;

/// Bytes in front of each block: its size, padded to the alignment C's `malloc` promises.
const HEADER: usize = 16;

fn layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size.checked_add(HEADER)?, HEADER).ok()
}

/// Writes the size into the header at `base` and returns the pointer after it.
///
/// # Safety
/// `base` is null or the start of a block of at least `HEADER` bytes.
unsafe fn finish(base: *mut u8, size: usize) -> *mut c_void {
    if base.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: the block starts with HEADER bytes reserved for the size, aligned to 16.
    unsafe {
        (base as *mut usize).write(size);
        base.add(HEADER) as *mut c_void
    }
}

/// The block's start and size, from a pointer that `malloc`, `calloc` or `realloc` returned.
///
/// # Safety
/// `ptr` came from one of this module's allocation functions and was not freed.
unsafe fn block(ptr: *mut c_void) -> (*mut u8, usize) {
    // SAFETY: the caller's contract: HEADER bytes before `ptr` hold the size.
    unsafe {
        let base = (ptr as *mut u8).sub(HEADER);
        (base, (base as *const usize).read())
    }
}

/// C `malloc`.
///
/// # Safety
/// As C's: the result is freed once, with `free`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    match layout(size) {
        // SAFETY: the layout has a non-zero size (at least HEADER).
        Some(l) => unsafe { finish(alloc(l), size) },
        None => std::ptr::null_mut(),
    }
}

/// C `calloc`: zeroed memory for `count` items of `size` bytes.
///
/// # Safety
/// As C's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn calloc(count: usize, size: usize) -> *mut c_void {
    match count.checked_mul(size).and_then(|n| Some((n, layout(n)?))) {
        // SAFETY: the layout has a non-zero size (at least HEADER).
        Some((n, l)) => unsafe { finish(alloc_zeroed(l), n) },
        None => std::ptr::null_mut(),
    }
}

/// C `realloc`; a null `ptr` allocates. On failure the old block stays valid.
///
/// # Safety
/// As C's: `ptr` is null or a live block of this module.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    if ptr.is_null() {
        // SAFETY: as for malloc.
        return unsafe { malloc(size) };
    }
    let Some(new) = layout(size) else {
        return std::ptr::null_mut();
    };
    // SAFETY: `ptr` is a live block; its layout is rebuilt from the size in its header.
    unsafe {
        let (base, old) = block(ptr);
        let old = layout(old).expect("the layout of a live block");
        finish(grow(base, old, new.size()), size)
    }
}

/// C `free`; a null pointer is ignored.
///
/// # Safety
/// As C's: `ptr` is null or a live block of this module, freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: `ptr` is a live block; its layout is rebuilt from the size in its header.
    unsafe {
        let (base, size) = block(ptr);
        dealloc(base, layout(size).expect("the layout of a live block"));
    }
}

/// C `strcpy`: copies the NUL-terminated `src`, its NUL included, to `dst`.
///
/// # Safety
/// As C's: `src` is NUL-terminated and `dst` has room for it; they do not overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn strcpy(dst: *mut u8, src: *const u8) -> *mut u8 {
    // SAFETY: the caller's contract.
    unsafe {
        let n = std::ffi::CStr::from_ptr(src as *const std::ffi::c_char)
            .to_bytes_with_nul()
            .len();
        std::ptr::copy_nonoverlapping(src, dst, n);
    }
    dst
}

/// The system allocator (dlmalloc on this target), except that freeing null does nothing.
struct NullTolerant;

// SAFETY: every call is forwarded to `System`, which upholds the contract; a null pointer,
// which no allocation returns, is never passed on to `dealloc`.
unsafe impl GlobalAlloc for NullTolerant {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !ptr.is_null() {
            // SAFETY: a live block of this allocator.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's block and layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: NullTolerant = NullTolerant;
