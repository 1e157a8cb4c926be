//! The Tansu broker: where its executable is, and the command line both
//! local mode and the test kit run it with.

use std::path::{Path, PathBuf};

/// The variable naming the `tansu` executable (local mode's `--tansu`, the
/// test kit's broker).
pub const TANSU_ENV: &str = "CHATPIPE_TANSU";

/// Finds the `tansu` executable: `explicit` when given (and a file), else
/// `tansu` on `PATH`, else `~/.cargo/bin/tansu`.
pub fn find_tansu(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return p.is_file().then(|| p.to_owned());
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("tansu"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let home = std::env::var_os("HOME")?;
        let p = PathBuf::from(home).join(".cargo/bin/tansu");
        p.is_file().then_some(p)
    })
}

/// Arguments of a Tansu broker listening on (and advertising) `server`
/// (`host:port`), its data in `tansu.db` (SQLite) of its working
/// directory. SQLite, not memory storage: Tansu 0.6.0's memory engine
/// misreports end offsets and cannot fetch from inside a batch.
pub fn broker_args(server: &str) -> Vec<String> {
    let url = format!("tcp://{server}");
    vec![
        "broker".to_owned(),
        "--listener-url".to_owned(),
        url.clone(),
        "--advertised-listener-url".to_owned(),
        url,
        "--storage-engine".to_owned(),
        "sqlite://tansu.db".to_owned(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_tansu_path_must_exist() {
        assert_eq!(find_tansu(Some(Path::new("/nonexistent/tansu"))), None);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tansu");
        std::fs::write(&p, "").unwrap();
        assert_eq!(find_tansu(Some(&p)), Some(p));
    }

    #[test]
    fn the_broker_listens_and_advertises_one_address_with_file_storage() {
        assert_eq!(
            broker_args("127.0.0.1:9092"),
            [
                "broker",
                "--listener-url",
                "tcp://127.0.0.1:9092",
                "--advertised-listener-url",
                "tcp://127.0.0.1:9092",
                "--storage-engine",
                "sqlite://tansu.db"
            ]
        );
    }
}
