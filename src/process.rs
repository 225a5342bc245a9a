//! Telling whether a process that recorded its pid is still the one running (pids are reused).

/// When process `pid` started, `None` if there is no such process or the system does not say.
/// Linux: field 22 of `/proc/<pid>/stat` (clock ticks since boot). Windows: the creation time (100 ns
/// units since 1601). Other systems: always `None`.
pub fn start_ticks(pid: u32) -> Option<u64> {
    probe(pid).flatten()
}

/// True while the process `pid` that started at `start` (when known) runs. Where the system gives
/// no start time (Unix other than Linux) a live process that reuses the pid counts as running.
pub fn is_running(pid: u32, start: Option<u64>) -> bool {
    match probe(pid) {
        None => false,
        Some(now) => start.is_none_or(|then| now.is_none_or(|now| then == now)),
    }
}

/// `None` when no process `pid` runs, else `Some(its start time, when the system tells)`.
#[cfg(target_os = "linux")]
fn probe(pid: u32) -> Option<Option<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces or ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    Some(Some(after_name.split_whitespace().nth(19)?.parse().ok()?))
}

#[cfg(all(unix, not(target_os = "linux")))]
fn probe(pid: u32) -> Option<Option<u64>> {
    let pid = libc::pid_t::try_from(pid).ok().filter(|&p| p > 0)?;
    // SAFETY: signal 0 only asks whether the process exists; nothing is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    // EPERM: it exists but belongs to another user.
    let exists = rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists.then_some(None)
}

#[cfg(windows)]
fn probe(pid: u32) -> Option<Option<u64>> {
    use windows_sys::Win32::Foundation::{
        CloseHandle, GetLastError, ERROR_ACCESS_DENIED, FILETIME, STILL_ACTIVE,
    };
    use windows_sys::Win32::System::Threading::{
        GetExitCodeProcess, GetProcessTimes, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
    };
    // SAFETY: plain Win32 calls on a handle this function opens and closes; the out-parameters
    // are locals of the right types.
    unsafe {
        let handle = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
        if handle.is_null() {
            // Access denied: it exists, but belongs to someone we may not inspect.
            return (GetLastError() == ERROR_ACCESS_DENIED).then_some(None);
        }
        let mut code = 0u32;
        let alive = GetExitCodeProcess(handle, &mut code) != 0 && code == STILL_ACTIVE as u32;
        let zero = FILETIME {
            dwLowDateTime: 0,
            dwHighDateTime: 0,
        };
        let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
        let start = (GetProcessTimes(handle, &mut created, &mut exited, &mut kernel, &mut user)
            != 0)
            .then(|| (u64::from(created.dwHighDateTime) << 32) | u64::from(created.dwLowDateTime));
        CloseHandle(handle);
        alive.then_some(start)
    }
}

#[cfg(not(any(unix, windows)))]
fn probe(_pid: u32) -> Option<Option<u64>> {
    None
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
