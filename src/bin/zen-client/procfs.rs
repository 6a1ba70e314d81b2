//! What Linux's `/proc` says about a process: its resident memory and the CPU time it has used.
//!
//! Only `zen-client bench` needs these, but the integration tests and the soak example read the
//! same figures about the server, so they include this very file by path
//! (`#[path = ".../procfs.rs"] mod procfs;`) rather than keep a copy: it depends on nothing but
//! `std`. Nothing here panics; a process that is gone, or a file not shaped as expected, is
//! `None` or an error.

use std::{collections::HashMap, io, time::Duration};

/// `USER_HZ`, the unit of CPU times in `/proc/PID/stat`: 100 on every Linux architecture,
/// whatever the kernel's own tick rate.
const CLOCK_TICKS_PER_SECOND: u64 = 100;

/// How far a difference of two readings of `/proc/PID/stat` can be from the exact time: a tick
/// at each end.
const PROCESS_CLOCK_ROUNDING: Duration = Duration::from_millis(2 * 1000 / CLOCK_TICKS_PER_SECOND);

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

/// A reading of the CPU time a process has used: the whole process's, to the hundredth of a
/// second ([`cpu_time`]), and each of its live threads', to the nanosecond, with the number of
/// times each was put on a CPU (the first and third fields of `/proc/PID/task/TID/schedstat`,
/// the scheduler's own account).
#[derive(Debug, Clone)]
pub struct CpuClock {
    process: Duration,
    /// By thread ID; `None` if a thread's figures could not be read.
    threads: Option<Threads>,
}

/// Each live thread's figures, by thread ID.
type Threads = HashMap<u32, ThreadClock>;

/// One thread's figures in its `schedstat`.
#[derive(Debug, Clone, Copy)]
struct ThreadClock {
    ran: Duration,
    runs: u64,
}

impl CpuClock {
    /// Reads the clocks of process `pid`.
    ///
    /// # Errors
    ///
    /// As [`cpu_time`].
    pub fn read(pid: u32) -> io::Result<Self> {
        Ok(Self { threads: thread_times(pid), process: cpu_time(pid)? })
    }

    /// The CPU time used between `earlier` and this reading: to the nanosecond when every
    /// thread of `earlier` is still there, otherwise to the hundredth of a second. A thread
    /// that began and ended between the readings is in neither; when the threads' sum falls
    /// short of the whole process's by more than the latter's rounding (or a kernel reports no
    /// times in `schedstat`), the whole process's is taken.
    pub fn since(&self, earlier: &CpuClock) -> Option<Duration> {
        let process = self.process.checked_sub(earlier.process)?;
        let Some((before, after)) = self.threads_since(earlier) else { return Some(process) };
        let total = |threads: &Threads| threads.values().map(|clock| clock.ran).sum::<Duration>();
        let threads = total(after).checked_sub(total(before))?;
        Some(if threads + PROCESS_CLOCK_ROUNDING < process { process } else { threads })
    }

    /// How many times the process's threads were put on a CPU between `earlier` and this
    /// reading (below saturation, about how many times they woke up: a preempted thread counts
    /// again, and a thread that began and ended between the readings not at all); `None` unless
    /// every thread of `earlier` is still there.
    pub fn runs_since(&self, earlier: &CpuClock) -> Option<u64> {
        let (before, after) = self.threads_since(earlier)?;
        let total = |threads: &Threads| threads.values().map(|clock| clock.runs).sum::<u64>();
        total(after).checked_sub(total(before))
    }

    /// Both readings' threads, if every thread of `earlier` is still there.
    fn threads_since<'a>(&'a self, earlier: &'a CpuClock) -> Option<(&'a Threads, &'a Threads)> {
        let (before, after) = (earlier.threads.as_ref()?, self.threads.as_ref()?);
        before.keys().all(|thread| after.contains_key(thread)).then_some((before, after))
    }
}

/// Each live thread's figures, by thread ID.
///
/// A thread that ends between the listing of the threads and the reading of its file is not
/// live, and is left out; a file not shaped as expected makes the whole reading `None`.
fn thread_times(pid: u32) -> Option<Threads> {
    let mut threads = Threads::default();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let thread: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let Ok(schedstat) = std::fs::read_to_string(format!("/proc/{pid}/task/{thread}/schedstat")) else {
            continue;
        };
        let mut fields = schedstat.split_whitespace().map(str::parse::<u64>);
        let ran = Duration::from_nanos(fields.next()?.ok()?);
        let runs = fields.nth(1)?.ok()?;
        threads.insert(thread, ThreadClock { ran, runs });
    }
    Some(threads)
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

    /// The ID of the thread calling.
    fn this_thread() -> u32 {
        let link = std::fs::read_link("/proc/thread-self").unwrap();
        link.file_name().and_then(|name| name.to_str()).and_then(|name| name.parse().ok()).unwrap()
    }

    #[test]
    fn this_thread_is_clocked_to_the_nanosecond_within_the_coarse_clock_of_its_process() {
        // Other tests' threads come and go meanwhile: only this thread's figures are certain.
        let (pid, thread) = (std::process::id(), this_thread());
        let mine = |clock: &CpuClock| *clock.threads.as_ref().and_then(|threads| threads.get(&thread)).unwrap();
        let before = CpuClock::read(pid).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let after = loop {
            std::hint::black_box((0..10_000).sum::<u64>());
            let now = CpuClock::read(pid).unwrap();
            if mine(&now).ran - mine(&before).ran >= Duration::from_millis(50) {
                break now;
            }
            assert!(std::time::Instant::now() < deadline, "this thread was never given 50 ms of CPU");
        };
        let ran = mine(&after).ran - mine(&before).ran;
        // The whole process's coarse clock counts this thread too, give or take its rounding.
        let process = after.process - before.process;
        assert!(process + PROCESS_CLOCK_ROUNDING >= ran, "{ran:?} for this thread, {process:?} for the process");
        std::thread::sleep(Duration::from_millis(1));
        let slept = CpuClock::read(pid).unwrap();
        assert!(mine(&slept).runs > mine(&after).runs, "slept and woke up: {slept:?}");
    }

    #[test]
    fn the_threads_sum_gives_way_to_the_whole_process_when_it_falls_short() {
        let clock = |process_ms: u64, threads: &[(u32, u64)]| CpuClock {
            process: Duration::from_millis(process_ms),
            threads: Some(
                threads
                    .iter()
                    .map(|&(thread, ran_us)| (thread, ThreadClock { ran: Duration::from_micros(ran_us), runs: ran_us }))
                    .collect(),
            ),
        };
        let before = clock(1_000, &[(1, 600_000), (2, 400_000)]);
        // Every thread there, a new one too: to the microsecond, within the rounding.
        let after = clock(1_020, &[(1, 612_345), (2, 400_001), (3, 5)]);
        assert_eq!(after.since(&before), Some(Duration::from_micros(12_351)));
        assert_eq!(after.runs_since(&before), Some(12_351));
        // A thread that came and went in between took 100 ms with it.
        let after = clock(1_120, &[(1, 612_345), (2, 400_001)]);
        assert_eq!(after.since(&before), Some(Duration::from_millis(120)));
        // A thread gone: the whole process's figure, and no count of runs.
        let after = clock(1_050, &[(1, 640_000)]);
        assert_eq!(after.since(&before), Some(Duration::from_millis(50)));
        assert_eq!(after.runs_since(&before), None);
    }

    #[test]
    fn a_process_that_does_not_exist_has_no_figures() {
        // Above the kernel's largest PID (4,194,304).
        let pid = 4_194_305;
        assert_eq!(rss_kib(pid), None);
        assert_eq!(cpu_time(pid).map_err(|error| error.kind()), Err(io::ErrorKind::NotFound));
    }
}
