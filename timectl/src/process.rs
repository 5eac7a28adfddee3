//! Processes on this machine that `timectl` started (local networks): whether a PID is still
//! alive, whether it is still the `timed` we started (PIDs are reused), and signals. Shared by
//! `local` and the chaos backend so both judge a PID the same way.

use std::path::Path;

/// The state letter of a process from /proc/PID/stat, None when it does not exist.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may contain anything; the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Alive and not a zombie.
pub fn alive(pid: u32) -> bool {
    !matches!(proc_state(pid), None | Some('Z') | Some('X'))
}

/// argv of a process, None when it is gone or has none.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> =
        raw.split(|&b| b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    (!args.is_empty()).then_some(args)
}

/// Whether `argv` is the node's: when its data dir is known, a process naming exactly that
/// `--data-dir` (whatever the binary is called: copies such as `timed-before` are common in
/// benchmarks); else a binary whose file name starts with `timed`.
pub fn is_timed_argv(argv: &[String], data_dir: Option<&Path>) -> bool {
    match data_dir {
        Some(d) => argv.windows(2).any(|w| w[0] == "--data-dir" && Path::new(&w[1]) == d),
        None => argv
            .first()
            .and_then(|a| Path::new(a).file_name())
            .is_some_and(|n| n.to_string_lossy().starts_with("timed")),
    }
}

/// Whether PID still is the timed an inventory names: a live process whose argv[0] is a timed
/// binary and, when known, whose --data-dir is the node's. Guards against PID reuse.
pub fn is_our_timed(pid: u32, data_dir: Option<&Path>) -> bool {
    alive(pid) && cmdline(pid).is_some_and(|argv| is_timed_argv(&argv, data_dir))
}

pub fn signal(pid: u32, sig: i32) -> std::io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_live_timed_processes() {
        // This test binary is alive but is not timed.
        assert!(alive(std::process::id()));
        assert!(!is_our_timed(std::process::id(), None));
        // PID 0 has no /proc entry.
        assert!(!alive(0));
        let argv: Vec<String> = ["/usr/bin/timed", "--data-dir", "/d"].map(String::from).to_vec();
        assert!(is_timed_argv(&argv, Some(Path::new("/d"))));
        assert!(!is_timed_argv(&argv, Some(Path::new("/e"))));
        assert!(is_timed_argv(&argv, None));
        // A renamed copy of the binary is still the node when it names the node's data dir.
        let copy: Vec<String> = ["/tmp/node-before", "--data-dir", "/d"].map(String::from).to_vec();
        assert!(is_timed_argv(&copy, Some(Path::new("/d"))));
        assert!(!is_timed_argv(&copy, None));
        assert!(!is_timed_argv(&["/bin/sleep".to_string(), "60".to_string()], Some(Path::new("/d"))));
    }
}
