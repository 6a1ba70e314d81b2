//! What Linux's `/proc` says about a process: its resident memory.
//!
//! Only `zen-client bench` needs these, but the integration tests and the soak example read the
//! same figures about the server, so they include this very file by path
//! (`#[path = ".../procfs.rs"] mod procfs;`) rather than keep a copy: it depends on nothing but
//! `std`. Nothing here panics; a process that is gone, or a file not shaped as expected, is
//! `None` or an error.

/// Resident memory of process `pid`, in KiB (`VmRSS` in `/proc/PID/status`); `None` if the
/// process is gone or the system does not say.
pub fn rss_kib(pid: u32) -> Option<u64> {
    rss_kib_in_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The `VmRSS` line of a `/proc/PID/status` text, in KiB.
fn rss_kib_in_status(status: &str) -> Option<u64> {
    let value = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    value.trim().strip_suffix("kB")?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_from_the_vmrss_line() {
        let status = "Name:\tzen-server\nVmPeak:\t  20000 kB\nVmRSS:\t    6340 kB\nThreads:\t3\n";
        assert_eq!(rss_kib_in_status(status), Some(6340));
        assert_eq!(rss_kib_in_status("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn this_process_has_memory() {
        assert!(rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }

    #[test]
    fn a_process_that_does_not_exist_has_no_figures() {
        // Above the kernel's largest PID (4,194,304).
        let pid = 4_194_305;
        assert_eq!(rss_kib(pid), None);
    }
}
