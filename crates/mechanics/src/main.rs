//! The `mechanics` command: parses arguments and hands over to [`mechanics::cli`].

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mechanics_core::JobMemoryAllocator = mechanics_core::JobMemoryAllocator;

fn main() -> ExitCode {
    mechanics::cli::main()
}
