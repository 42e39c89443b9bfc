//! A node's processes as `/proc` shows them: its runtime processes (the
//! children `warren serve` starts with `[runtime] processes`), and whether a
//! process has exited.

use std::collections::BTreeSet;

/// The runtime processes (children started with `--runtime-process`) that
/// node `pid` runs now, zombies left out.
pub fn runtime_processes(pid: u32) -> BTreeSet<u32> {
    let mut found = BTreeSet::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            let running = state(child).is_some_and(|s| s != 'Z');
            if running
                && cmdline
                    .split(|b| *b == 0)
                    .any(|a| a == b"--runtime-process")
            {
                found.insert(child);
            }
        }
    }
    found
}

/// A process's state letter (`R`, `S`, `Z`, …); `None` once it is gone.
pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}
