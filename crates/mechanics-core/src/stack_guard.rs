//! Survives native stack overflow in worker threads.
//!
//! Boa's parser, compiler and some built-ins recurse on the native stack with no bound of their
//! own: ten thousand nested parentheses are enough to overflow a 256 MiB stack, and Rust answers a
//! stack overflow by aborting the whole process. No pre-scan of the source can bound that
//! recursion reliably without a full parse (a regular expression can hide what looks like a string
//! to a scanner), so the guard sits where the overflow happens: a `SIGSEGV`/`SIGBUS` handler,
//! running on the thread's alternate signal stack, recognises a fault in the guard zone at the
//! bottom of a *worker's* stack, marks the worker's park signal, returns the stack's pages to the
//! system and blocks that thread for good. The pool's supervisor then fails the job with a clear
//! error and starts a replacement thread. The TypeScript transpiler's thread is guarded the same
//! way (oxc recurses without a bound too; see [`crate::typescript::transpile`]). Every other fault
//! goes to the handler that was installed before (Rust's own, which reports and aborts).

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Once, OnceLock, mpsc};
use std::time::Duration;

use crate::memory::PARKED_FOR_STACK;

thread_local! {
    /// `(low, high)`: the address range whose faults mean this worker's stack is exhausted.
    static GUARD_ZONE: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    /// `(low, len)` of the thread's stack, released when the thread parks.
    static STACK: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    static SIGNAL: Cell<*const AtomicU8> = const { Cell::new(std::ptr::null()) };
}

/// Width of the zone around the lowest stack address that counts as overflow.
const ZONE: usize = 1024 * 1024;

/// Part of the stack's top left alone when the rest is released.
const KEEP_AT_TOP: usize = 1024 * 1024;

static INSTALL: Once = Once::new();
/// The handlers for `SIGSEGV` and `SIGBUS` that were installed before ours, in that order.
static PREVIOUS: OnceLock<[libc::sigaction; 2]> = OnceLock::new();

/// Native stack of a thread that parses what a caller sent (a TypeScript or JavaScript module):
/// room for nesting far deeper than people write (about 100,000 levels); deeper still hits the
/// guard.
const PARSER_STACK_BYTES: usize = 256 * 1024 * 1024;

/// How often [`on_guarded_thread`] looks whether its thread was parked by the guard.
const PARK_POLL: Duration = Duration::from_millis(20);

/// Why [`on_guarded_thread`] has no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unanswered {
    /// No thread could be started.
    NoThread,
    /// The work overflowed its stack; its thread is parked for good.
    TooDeep,
    /// The work panicked.
    Failed,
}

/// Runs `work` on a thread of its own with a large guarded stack and waits for its answer: a
/// parser recursing without a bound over hostile input overflows that stack, which parks the
/// thread (its pages released) instead of aborting the process.
pub(crate) fn on_guarded_thread<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Unanswered> {
    let signal = Arc::new(AtomicU8::new(0));
    let (sender, answer) = mpsc::channel();
    let thread_signal = signal.clone();
    std::thread::Builder::new()
        .name(name.to_owned())
        .stack_size(PARSER_STACK_BYTES)
        .spawn(move || {
            guard_current_thread(&thread_signal);
            let _ = sender.send(work());
        })
        .map_err(|_| Unanswered::NoThread)?;
    loop {
        match answer.recv_timeout(PARK_POLL) {
            Ok(result) => return Ok(result),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if signal.load(Ordering::Acquire) == PARKED_FOR_STACK {
                    return Err(Unanswered::TooDeep);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(Unanswered::Failed),
        }
    }
}

/// Guards the calling thread's stack; `signal` receives [`PARKED_FOR_STACK`] if it overflows.
/// The caller keeps `signal` alive for as long as the thread runs.
pub(crate) fn guard_current_thread(signal: &AtomicU8) {
    INSTALL.call_once(install);
    let Some((low, len)) = current_stack() else {
        return;
    };
    GUARD_ZONE.with(|z| z.set((low.saturating_sub(ZONE), low + ZONE)));
    STACK.with(|s| s.set((low, len)));
    SIGNAL.with(|s| s.set(signal));
}

fn current_stack() -> Option<(usize, usize)> {
    // SAFETY: plain libc calls on a zeroed attribute object that is destroyed afterwards.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut len: libc::size_t = 0;
        let ok = libc::pthread_attr_getstack(&attr, &mut addr, &mut len) == 0;
        libc::pthread_attr_destroy(&mut attr);
        ok.then_some((addr as usize, len))
    }
}

fn install() {
    // SAFETY: plain libc calls; the previous actions are recorded before ours replaces them, so
    // the handler always finds them.
    unsafe {
        let mut previous: [libc::sigaction; 2] = std::mem::zeroed();
        for (signal, old) in [libc::SIGSEGV, libc::SIGBUS]
            .into_iter()
            .zip(previous.iter_mut())
        {
            libc::sigaction(signal, std::ptr::null(), old);
        }
        if PREVIOUS.set(previous).is_err() {
            return;
        }
        for signal in [libc::SIGSEGV, libc::SIGBUS] {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

extern "C" fn handler(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let address = unsafe { (*info).si_addr() } as usize;
    let (low, high) = GUARD_ZONE.try_with(Cell::get).unwrap_or((0, 0));
    if low != 0 && (low..high).contains(&address) {
        let park = SIGNAL.try_with(Cell::get).unwrap_or(std::ptr::null());
        if !park.is_null() {
            // SAFETY: the worker keeps the atomic alive while its thread lives.
            unsafe { &*park }.store(PARKED_FOR_STACK, Ordering::Release);
        }
        let (stack_low, stack_len) = STACK.try_with(Cell::get).unwrap_or((0, 0));
        if stack_low != 0 && stack_len > KEEP_AT_TOP {
            // The thread never returns to the deep frames of its main stack: give their pages
            // back. The top of the range holds the thread's descriptor and TLS, which the
            // blocked thread still uses, so it is kept.
            // SAFETY: the range is the unused lower part of this thread's own stack.
            unsafe {
                libc::madvise(
                    stack_low as *mut libc::c_void,
                    stack_len - KEEP_AT_TOP,
                    libc::MADV_DONTNEED,
                );
            }
        }
        loop {
            // SAFETY: async-signal-safe; blocks this thread only.
            unsafe {
                libc::pause();
            }
        }
    }
    let previous = PREVIOUS
        .get()
        .map(|p| if signal == libc::SIGBUS { &p[1] } else { &p[0] });
    match previous {
        Some(action) if action.sa_flags & libc::SA_SIGINFO != 0 && action.sa_sigaction > 1 => {
            // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this type.
            let previous: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { std::mem::transmute(action.sa_sigaction) };
            previous(signal, info, context);
        }
        Some(action) if action.sa_sigaction > 1 => {
            // SAFETY: a plain handler takes only the signal number.
            let previous: extern "C" fn(libc::c_int) =
                unsafe { std::mem::transmute(action.sa_sigaction) };
            previous(signal);
        }
        _ => {
            // Default action: restore it and return, so the faulting access repeats and the
            // process terminates as it would have without us.
            // SAFETY: resetting a signal disposition is async-signal-safe.
            unsafe {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
    }
}
