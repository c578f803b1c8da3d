//! The `vit-batch` binary: parse flags, call the library, map errors to exit codes.
//! All logic lives in the library (`vit_batch::*`); see `cli.rs` for the commands
//! and `terminal.rs` for what they print while they run.

mod cli;
mod terminal;

fn main() {
    std::process::exit(cli::main());
}
