//! CPU time of running processes, by component, read from `/proc` (Linux).
//!
//! A component is a set of processes recognised by their executable's file
//! name (`chatpipe-ingest`, `tansu`, `postgres`, …). A [`Snapshot`] holds
//! each process's user + system time; the difference of two snapshots is
//! what each component spent in between (processes alive at both).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Which component an executable's file name belongs to.
pub fn component_of(exe_name: &str) -> Option<&'static str> {
    Some(match exe_name {
        "chatpipe-ingest" => "ingest",
        "chatpipe-processor" => "processor",
        "chatpipe-api" => "api",
        "chatpipe-local" => "local mode",
        "tansu" => "broker (tansu)",
        "postgres" => "postgres",
        _ => return None,
    })
}

/// User + system CPU time of each process of interest, by pid.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    procs: BTreeMap<u32, (&'static str, Duration)>,
}

/// `utime + stime` (fields 14 and 15 of `/proc/<pid>/stat`) in clock ticks.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

impl Snapshot {
    /// Reads every process of a known component now.
    pub fn take() -> Self {
        let tick = clock_ticks_per_second();
        let mut procs = BTreeMap::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Self::default();
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let base = Path::new("/proc").join(pid.to_string());
            let Some(component) = std::fs::read_link(base.join("exe"))
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .and_then(|n| component_of(n.trim_end_matches(" (deleted)")))
            else {
                continue;
            };
            let Some(ticks) = std::fs::read_to_string(base.join("stat"))
                .ok()
                .and_then(|s| parse_stat_ticks(&s))
            else {
                continue;
            };
            procs.insert(
                pid,
                (component, Duration::from_micros(ticks * 1_000_000 / tick)),
            );
        }
        Self { procs }
    }

    /// CPU time each component spent since `earlier` (processes present in
    /// both snapshots), and how many processes it counted.
    pub fn since(&self, earlier: &Snapshot) -> BTreeMap<&'static str, (Duration, usize)> {
        let mut out: BTreeMap<&'static str, (Duration, usize)> = BTreeMap::new();
        for (pid, (component, now)) in &self.procs {
            if let Some((_, before)) = earlier.procs.get(pid) {
                let e = out.entry(component).or_default();
                e.0 += now.saturating_sub(*before);
                e.1 += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_with_spaces_in_the_name() {
        let line = "4242 (chatpipe proc) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat_ticks(line), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn components_by_executable() {
        assert_eq!(component_of("chatpipe-processor"), Some("processor"));
        assert_eq!(component_of("postgres"), Some("postgres"));
        assert_eq!(component_of("bash"), None);
    }

    #[test]
    fn this_machine_reports_known_processes_only() {
        // Whatever runs here, a snapshot minus itself is zero time.
        let s = Snapshot::take();
        assert!(s.since(&s).values().all(|(d, _)| d.is_zero()));
    }
}
