//! Processes a benchmark starts end with it, also when it is stopped from outside (Ctrl-C,
//! `timeout`), so no proxy is left holding the machine.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Ask the kernel to send the child SIGTERM when this thread ends. Call it from the thread that
/// lives as long as the child should (a benchmark's main thread).
pub fn ends_with_bench(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl, which
    // is async-signal-safe, and reads errno.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}
