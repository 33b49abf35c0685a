//! What the machine allows and what a server process costs: the descriptor
//! limit (raised as far as allowed) and resident memory from /proc.

/// Raises the soft descriptor limit to the hard one; returns the limit now in force.
pub fn raise_descriptor_limit() -> u64 {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}

/// Resident memory of `pid` in bytes (Linux), from /proc/<pid>/status.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
