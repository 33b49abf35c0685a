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

/// CPU time a process has used, all its threads, in seconds: in user space
/// (its own code) and in the kernel on its behalf (system calls: for a chat
/// server mostly the TCP sends, a floor any server pays per delivery).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTime {
    pub user: f64,
    pub system: f64,
}

impl CpuTime {
    pub fn total(self) -> f64 {
        self.user + self.system
    }

    /// What was used from `before` to `self`.
    pub fn since(self, before: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user - before.user,
            system: self.system - before.system,
        }
    }
}

/// CPU time `pid` has used so far, from /proc/<pid>/stat.
pub fn cpu_time(pid: u32) -> Option<CpuTime> {
    // Kernel ticks are exported in USER_HZ, 100 per second on Linux.
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // Fields 3.. follow; utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(CpuTime {
        user: utime as f64 / TICKS_PER_SECOND,
        system: stime as f64 / TICKS_PER_SECOND,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_seconds_reads_this_process() {
        // Spins until the reading has grown by 0.2 s, however busy the
        // machine (a fixed wall time flaked when other tests took the cores),
        // and checks it is in seconds: no more than the wall time spent.
        let cpu_seconds = |pid| super::cpu_time(pid).map(super::CpuTime::total);
        let start = cpu_seconds(std::process::id()).unwrap();
        let wall = std::time::Instant::now();
        let mut x = 0u64;
        loop {
            let spin = std::time::Instant::now();
            while spin.elapsed() < std::time::Duration::from_millis(10) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            let used = cpu_seconds(std::process::id()).unwrap() - start;
            if used >= 0.2 {
                let elapsed = wall.elapsed().as_secs_f64();
                assert!(used <= elapsed + 0.1, "{used} s of CPU in {elapsed} s");
                break;
            }
            assert!(
                wall.elapsed().as_secs() < 60,
                "the reading never grew: {used}"
            );
        }
    }
}
