//! What Linux's `/proc` says about a process: its resident memory and the CPU time it has used.
//!
//! Only `zen-client bench` needs these, but the integration tests and the soak example read the
//! same figures about the server, so they include this very file by path
//! (`#[path = ".../procfs.rs"] mod procfs;`) rather than keep a copy: it depends on nothing but
//! `std`. Nothing here panics; a process that is gone, or a file not shaped as expected, is
//! `None` or an error.

use std::{io, time::Duration};

/// `USER_HZ`, the unit of CPU times in `/proc/PID/stat`: 100 on every Linux architecture,
/// whatever the kernel's own tick rate.
const CLOCK_TICKS_PER_SECOND: u64 = 100;

/// Resident memory of process `pid`, in KiB (`VmRSS` in `/proc/PID/status`); `None` if the
/// process is gone or the system does not say.
pub fn rss_kib(pid: u32) -> Option<u64> {
    rss_kib_in_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// CPU time process `pid` has used so far, all its threads together: user plus system time,
/// fields 14 and 15 of `/proc/PID/stat`, to the hundredth of a second.
///
/// # Errors
///
/// The error of reading `/proc/PID/stat` (`NotFound` once the process is gone), or
/// `InvalidData` if the file does not hold the two fields.
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = cpu_ticks_in_stat(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no CPU times in /proc/{pid}/stat")))?;
    Ok(Duration::from_millis(ticks.saturating_mul(1000) / CLOCK_TICKS_PER_SECOND))
}

/// The `VmRSS` line of a `/proc/PID/status` text, in KiB.
fn rss_kib_in_status(status: &str) -> Option<u64> {
    let value = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    value.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// User plus system clock ticks of a `/proc/PID/stat` text.
fn cpu_ticks_in_stat(stat: &str) -> Option<u64> {
    // Field 2, the command name in parentheses, may itself hold spaces and parentheses: the
    // fields after it start after the last ')', with field 3 (`state`).
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(14 - 3);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    user.checked_add(system)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_user_plus_system_even_when_the_name_holds_spaces_and_parentheses() {
        let stat = "4242 (zen (a) b) S 1 4242 4242 0 -1 4194560 700 0 0 0 123 45 0 0 20 0 3 0 99 0 0";
        assert_eq!(cpu_ticks_in_stat(stat), Some(168));
    }

    #[test]
    fn a_stat_text_without_cpu_times_gives_none() {
        assert_eq!(cpu_ticks_in_stat("4242 (zen) S 1 2"), None);
        assert_eq!(cpu_ticks_in_stat("no parenthesis"), None);
        assert_eq!(cpu_ticks_in_stat("1 (x) S 1 1 1 0 -1 0 0 0 0 0 many 1"), None);
    }

    #[test]
    fn resident_memory_is_read_from_the_vmrss_line() {
        let status = "Name:\tzen-server\nVmPeak:\t  20000 kB\nVmRSS:\t    6340 kB\nThreads:\t3\n";
        assert_eq!(rss_kib_in_status(status), Some(6340));
        assert_eq!(rss_kib_in_status("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn this_process_has_memory_and_a_cpu_clock() {
        let pid = std::process::id();
        assert!(rss_kib(pid).is_some_and(|kib| kib > 0));
        assert!(cpu_time(pid).is_ok());
    }

    #[test]
    fn a_process_that_does_not_exist_has_no_figures() {
        // Above the kernel's largest PID (4,194,304).
        let pid = 4_194_305;
        assert_eq!(rss_kib(pid), None);
        assert_eq!(cpu_time(pid).map_err(|error| error.kind()), Err(io::ErrorKind::NotFound));
    }
}
