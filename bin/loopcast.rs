//! The loopcast command; all logic lives in the library.

fn main() {
    std::process::exit(loopcast::cli::main());
}
