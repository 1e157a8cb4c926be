//! Password hashing: Argon2id with the `argon2` crate's defaults (the
//! OWASP recommendation: 19 MiB, 2 passes, 1 lane), stored as a PHC
//! string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`). Verifying
//! reads the parameters from the stored string, so hashes made with other
//! parameters keep working.
//!
//! Both operations take tens of milliseconds of CPU and 19 MiB of memory
//! on purpose: callers on the async runtime run them through
//! [`off_runtime`], which runs at most one per CPU at a time (a flood of
//! sign-ins queues instead of taking every blocking thread and gigabytes of
//! memory).

use std::sync::{LazyLock, OnceLock};

use tokio::sync::Semaphore;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;

/// Password work running now: at most one per CPU.
static SLOTS: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())));

/// Runs `work` (hashing or verifying) on a blocking thread once one of the
/// per-CPU slots is free.
pub async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let _slot = SLOTS
        .acquire()
        .await
        .map_err(|e| format!("password work slots: {e}"))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("password work task: {e}"))
}

/// Hashes `password` with Argon2id and a random salt, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let salt = SaltString::encode_b64(&bytes)?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Whether `password` matches the PHC string `stored` (false when `stored`
/// is not a valid PHC string).
pub fn verify_password(stored: &str, password: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash of a random password, made once: verifying against it when the
/// username does not exist costs as much as a real verification, so the
/// answer's timing does not tell whether a username exists.
pub fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let random = uuid::Uuid::new_v4().to_string();
        // Hashing cannot fail with the default parameters and a generated
        // salt; an empty string would make the dummy check return at once,
        // which only costs the timing protection.
        hash_password(&random).unwrap_or_default()
    })
}

/// Verifies `password` against the dummy hash; always false.
pub fn verify_dummy(password: &str) -> bool {
    let _ = verify_password(dummy_hash(), password);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However many sign-ins arrive at once, at most one hash per CPU runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn password_work_runs_at_most_one_per_cpu() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..24)
            .map(|_| {
                let (running, most) = (Arc::clone(&running), Arc::clone(&most));
                tokio::spawn(off_runtime(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                }))
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let most = most.load(Ordering::SeqCst);
        assert!(most >= 1 && most <= cpus, "{most} at once with {cpus} CPUs");
    }

    #[test]
    fn hash_and_verify_round_trip() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert!(!h.contains("correct horse"));
        assert!(verify_password(&h, "correct horse battery"));
        assert!(!verify_password(&h, "correct horse batterY"));
        assert!(!verify_password(&h, ""));
        // Salted: the same password hashes differently.
        assert_ne!(h, hash_password("correct horse battery").unwrap());
        assert!(!verify_password("not a phc string", "x"));
        assert!(dummy_hash().starts_with("$argon2id$"));
        assert!(!verify_dummy("anything"));
    }
}
