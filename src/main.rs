//! The `vit-batch` binary: parse flags, call the library, map errors to exit codes.
//! All logic lives in the library (`vit_batch::*`); see `cli.rs` for the flags.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
