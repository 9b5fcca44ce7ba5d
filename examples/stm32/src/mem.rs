//! Byte-at-a-time `memcpy`, `memmove`, `memset` and `memcmp`, and the ARM
//! EABI entry points the compiler calls for them.
//!
//! Why: the versions `compiler_builtins` links by default are written for
//! speed (word copies with shifts for misaligned ends) and take 2.8 KB of
//! flash on this target; these take about a tenth of that. They are the
//! weak default, so defining the symbols here replaces them for this
//! firmware only. The cost is speed: a byte per load and store, which
//! for the largest copy this firmware makes (a 264-byte queued message)
//! is a few microseconds at 16 MHz. A board that copies large buffers
//! often should drop this module.
//!
//! Every access is volatile, so the optimiser cannot recognise a loop as a
//! copy and turn it back into a call to the function it is in.

use core::ptr::{read_volatile, write_volatile};

/// Copies `n` bytes from `src` to `dest`; the ranges must not overlap.
///
/// # Safety
/// `src` readable and `dest` writable for `n` bytes (the C contract).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: forward copy is right when the ranges do not overlap.
    unsafe { copy_forward(dest, src, n) };
    dest
}

/// Copies `n` bytes from `src` to `dest`; the ranges may overlap.
///
/// # Safety
/// As [`memcpy`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract.
    unsafe { move_bytes(dest, src, n) };
    dest
}

/// Sets `n` bytes at `dest` to `c` (truncated to a byte, as in C).
///
/// # Safety
/// `dest` writable for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract.
    unsafe { set_bytes(dest, c as u8, n) };
    dest
}

/// Compares `n` bytes: negative, zero or positive as the first differing
/// byte of `a` is below, equal to or above that of `b`.
///
/// # Safety
/// Both readable for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the caller's contract.
    unsafe { compare_bytes(a, b, n) }
}

/// `bcmp` is `memcmp` asked only whether the bytes are equal.
///
/// # Safety
/// As [`memcmp`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the caller's contract.
    unsafe { compare_bytes(a, b, n) }
}

// The loops live in functions with names of their own: the compiler knows
// what a call to `memset` (or `memmove`) means and would compile one in
// `__aeabi_memclr` back into a call to `__aeabi_memclr`.

/// # Safety
/// As [`memcmp`].
unsafe fn compare_bytes(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n.
        let (x, y) = unsafe { (read_volatile(a.add(i)), read_volatile(b.add(i))) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// # Safety
/// As [`memcpy`].
unsafe fn copy_forward(dest: *mut u8, src: *const u8, n: usize) {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n, inside both ranges.
        unsafe { write_volatile(dest.add(i), read_volatile(src.add(i))) };
        i += 1;
    }
}

/// # Safety
/// As [`memmove`].
unsafe fn move_bytes(dest: *mut u8, src: *const u8, n: usize) {
    // Copying away from the overlap reads every source byte before it is
    // written over: forwards when the destination is below the source,
    // else backwards.
    if (dest as usize) <= (src as usize) {
        // SAFETY: the caller's contract.
        unsafe { copy_forward(dest, src, n) };
        return;
    }
    let mut i = n;
    while i > 0 {
        i -= 1;
        // SAFETY: i < n, inside both ranges.
        unsafe { write_volatile(dest.add(i), read_volatile(src.add(i))) };
    }
}

/// # Safety
/// As [`memset`].
unsafe fn set_bytes(dest: *mut u8, value: u8, n: usize) {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n.
        unsafe { write_volatile(dest.add(i), value) };
        i += 1;
    }
}

// The ARM run-time ABI's names, which the compiler calls on this target
// (the 4 and 8 variants promise aligned pointers, which a byte copy does
// not need). Note `__aeabi_memset` takes the length before the value.

/// # Safety
/// As [`memcpy`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __aeabi_memcpy(dest: *mut u8, src: *const u8, n: usize) {
    // SAFETY: the caller's contract.
    unsafe { copy_forward(dest, src, n) };
}

/// # Safety
/// As [`memcpy`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __aeabi_memcpy4(dest: *mut u8, src: *const u8, n: usize) {
    // SAFETY: the caller's contract.
    unsafe { copy_forward(dest, src, n) };
}

/// # Safety
/// As [`memcpy`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __aeabi_memcpy8(dest: *mut u8, src: *const u8, n: usize) {
    // SAFETY: the caller's contract.
    unsafe { copy_forward(dest, src, n) };
}

/// # Safety
/// As [`memmove`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __aeabi_memmove(dest: *mut u8, src: *const u8, n: usize) {
    // SAFETY: the caller's contract.
    unsafe { move_bytes(dest, src, n) };
}

/// # Safety
/// As [`memmove`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __aeabi_memmove4(dest: *mut u8, src: *const u8, n: usize) {
    // SAFETY: the caller's contract.
    unsafe { move_bytes(dest, src, n) };
}

/// # Safety
/// As [`memmove`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __aeabi_memmove8(dest: *mut u8, src: *const u8, n: usize) {
    // SAFETY: the caller's contract.
    unsafe { move_bytes(dest, src, n) };
}

/// # Safety
/// As [`memset`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __aeabi_memset(dest: *mut u8, n: usize, c: i32) {
    // SAFETY: the caller's contract.
    unsafe { set_bytes(dest, c as u8, n) };
}

/// # Safety
/// As [`memset`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __aeabi_memset4(dest: *mut u8, n: usize, c: i32) {
    // SAFETY: the caller's contract.
    unsafe { set_bytes(dest, c as u8, n) };
}

/// # Safety
/// As [`memset`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __aeabi_memset8(dest: *mut u8, n: usize, c: i32) {
    // SAFETY: the caller's contract.
    unsafe { set_bytes(dest, c as u8, n) };
}

/// # Safety
/// As [`memset`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __aeabi_memclr(dest: *mut u8, n: usize) {
    // SAFETY: the caller's contract.
    unsafe { set_bytes(dest, 0, n) };
}

/// # Safety
/// As [`memset`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __aeabi_memclr4(dest: *mut u8, n: usize) {
    // SAFETY: the caller's contract.
    unsafe { set_bytes(dest, 0, n) };
}

/// # Safety
/// As [`memset`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __aeabi_memclr8(dest: *mut u8, n: usize) {
    // SAFETY: the caller's contract.
    unsafe { set_bytes(dest, 0, n) };
}
