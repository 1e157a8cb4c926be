//! Children that die with their parent, and signals.
//!
//! Linux ends a child whose parent *thread* exits when the child asked for
//! it with `PR_SET_PDEATHSIG`. A child spawned from a short-lived thread
//! (a test's runtime, a blocking task) would then die too early, so
//! [`spawn_tied`] spawns from one thread that lives as long as the process.

use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// Makes the child `cmd` starts receive `signal` when the thread that
/// spawned it exits (`PR_SET_PDEATHSIG`), so a parent killed with SIGKILL
/// leaves no children behind.
pub fn die_with_parent(cmd: &mut Command, signal: Signal) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and makes one
    // async-signal-safe system call (prctl); it touches no parent memory.
    unsafe {
        cmd.pre_exec(move || nix::sys::prctl::set_pdeathsig(signal).map_err(std::io::Error::from));
    }
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` from a thread that lives as long as the process, with
/// SIGKILL as its parent-death signal ([`die_with_parent`]): the child dies
/// with this process, and only then.
pub fn spawn_tied(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let spawned = std::thread::Builder::new()
            .name("procs-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    die_with_parent(&mut cmd, Signal::SIGKILL);
                    let _ = reply.send(cmd.spawn());
                }
            });
        // Without the thread every request fails with "spawner thread is gone".
        drop(spawned);
        Mutex::new(tx)
    });
    let gone = || std::io::Error::other("spawner thread is gone");
    let (tx, rx) = mpsc::channel();
    sender
        .lock()
        .map_err(|_| std::io::Error::other("spawner lock poisoned"))?
        .send((cmd, tx))
        .map_err(|_| gone())?;
    rx.recv().map_err(|_| gone())?
}

fn pid(raw: u32) -> Option<Pid> {
    i32::try_from(raw).ok().map(Pid::from_raw)
}

/// Sends `sig` to process `pid`; a process that is already gone is fine.
pub fn signal(pid_: u32, sig: Signal) -> nix::Result<()> {
    match pid(pid_).map(|p| kill(p, sig)) {
        Some(Ok(())) | Some(Err(Errno::ESRCH)) | None => Ok(()),
        Some(Err(e)) => Err(e),
    }
}

/// Sends `sig` to the process group led by `pid` (a child started with
/// its own group); a group that is already gone is fine.
pub fn signal_group(pid_: u32, sig: Signal) -> nix::Result<()> {
    match pid(pid_).map(|p| killpg(p, sig)) {
        Some(Ok(())) | Some(Err(Errno::ESRCH)) | None => Ok(()),
        Some(Err(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};

    fn alive(pid: u32) -> bool {
        kill(Pid::from_raw(pid as i32), None).is_ok()
    }

    /// Gone, or a zombie nobody reaped yet (a container's init may not).
    fn dead(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    fn wait_gone(child: &mut Child) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn a_tied_child_outlives_the_thread_that_asked_for_it() {
        let child = std::thread::spawn(|| {
            let mut cmd = Command::new("sleep");
            cmd.arg("600");
            spawn_tied(cmd).unwrap()
        })
        .join()
        .unwrap();
        let mut child = child;
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            alive(child.id()),
            "the asking thread is gone, the child is not"
        );
        signal(child.id(), Signal::SIGKILL).unwrap();
        assert!(wait_gone(&mut child));
    }

    #[test]
    fn a_group_signal_reaches_grandchildren() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "sleep 600 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .process_group(0);
        let mut child = spawn_tied(cmd).unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let grandchild: u32 = line.trim().parse().unwrap();
        assert!(alive(grandchild));
        signal_group(child.id(), Signal::SIGKILL).unwrap();
        assert!(wait_gone(&mut child));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !dead(grandchild) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(dead(grandchild), "the grandchild got the group's SIGKILL");
        // Gone processes and groups are not an error.
        assert_eq!(signal(child.id(), Signal::SIGTERM), Ok(()));
        assert_eq!(signal_group(child.id(), Signal::SIGTERM), Ok(()));
    }
}
