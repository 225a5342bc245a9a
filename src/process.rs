//! Telling whether a process that recorded its pid is still the one running (pids are reused).

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot), `None` if no such process.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces or ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// True while the process `pid` that started at `start` (when known) runs.
pub fn is_running(pid: u32, start: Option<u64>) -> bool {
    match start_ticks(pid) {
        None => false,
        Some(now) => start.is_none_or(|then| then == now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_runs_and_a_reaped_child_does_not() {
        let me = std::process::id();
        let start = start_ticks(me);
        assert!(start.is_some());
        assert!(is_running(me, start));
        assert!(!is_running(me, start.map(|s| s + 1)));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!is_running(pid, None) || start_ticks(pid).is_some());
    }
}
