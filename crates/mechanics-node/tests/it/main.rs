//! The node service against real HTTP on 127.0.0.1: auth, body limit, status mapping, overload,
//! recycling signal, shutdown. The fleet (real child processes of the `mechanics` binary) is
//! tested in `crates/mechanics/tests/it/fleet.rs`, where the binary is at hand.

// The pool runs in this process: its memory limits need the accounting allocator.
#[global_allocator]
static ALLOCATOR: mechanics_core::JobMemoryAllocator = mechanics_core::JobMemoryAllocator;

mod service;
