//! The `vit-batch` binary: parse flags, call the library, map errors to exit codes.
//! All logic lives in the library (`vit_batch::*`); see `cli.rs` for the flags.

mod cli;

fn main() {
    // Decoded images and tensors are large, short-lived and of varying size; with
    // glibc's sliding mmap threshold they land on per-thread heaps that fragment, and
    // a long run's peak RSS creeps up (measured: +22% from 600 to 6000 images). A fixed
    // 1 MiB threshold returns them to the OS on free (+4%). See BENCHMARKS.md.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
    std::process::exit(cli::main());
}
