//! Writing a command's output to standard output, where a reader that leaves early (a closed
//! pipe) ends the output quietly instead of a `print!` panic.

/// Writes a command's output to standard output. A reader that stops early (`engine map ... |
/// head`) closes the pipe: the rest is not written, and that is no error (`print!` panics on
/// it, with a backtrace).
pub(super) fn stdout(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: cannot write the output: {e}");
    }
}

/// One line of a command's output, as `println!` writes it, through `stdout`.
pub(super) fn line(text: std::fmt::Arguments<'_>) {
    stdout(&format!("{text}\n"));
}
