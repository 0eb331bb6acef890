//! The process's own CPU time and resident memory, read from `/proc/self` (Linux).

/// CPU time (user + system) this process has used, in seconds.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    cpu_seconds_of(&stat)
}

/// CPU seconds from the text of a `/proc/<pid>/stat` file.
pub fn cpu_seconds_of(stat: &str) -> Option<f64> {
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the file, utime 14 and stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks_per_second())
}

/// The calling thread's id, from `/proc/thread-self` (no system call needed).
pub fn current_thread_id() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// CPU time one thread of this process has used, in seconds.
pub fn thread_cpu_seconds(thread: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{thread}/stat")).ok()?;
    cpu_seconds_of(&stat)
}

/// Resident set size of this process, in bytes.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    rss_bytes_of(&status)
}

/// Resident set size from the text of a `/proc/<pid>/status` file.
pub fn rss_bytes_of(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn clock_ticks_per_second() -> f64 {
    // USER_HZ is 100 on every Linux architecture the shard targets.
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_and_status() {
        let stat = "1234 (tutti sfu) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 8 0 100 0 0";
        assert_eq!(cpu_seconds_of(stat), Some(3.0));
        assert_eq!(
            rss_bytes_of("Name:\tx\nVmRSS:\t  2048 kB\n"),
            Some(2 * 1024 * 1024)
        );
        assert!(cpu_seconds().is_some());
        assert!(rss_bytes().is_some());
        let me = current_thread_id().expect("thread id");
        assert!(thread_cpu_seconds(me).is_some());
    }
}
