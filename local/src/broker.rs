//! The Kafka-protocol broker of local mode: when nothing listens on the
//! manifest's bootstrap address, local mode runs Tansu there, with its data
//! in a SQLite file under the state directory so topics and offsets survive
//! a restart of local mode.
//!
//! The broker is supervised like every other process (restarted when it
//! crashes) and stopped last. Its executable and command line are the test
//! kit's too ([`chatpipe_procs::tansu`]).

use std::net::ToSocketAddrs;
use std::path::Path;
use std::time::Duration;

pub use chatpipe_procs::find_tansu;

use crate::processes::{ProcessSpec, Role};

/// The first server of a comma-separated bootstrap list.
pub fn first_server(bootstrap: &str) -> &str {
    bootstrap.split(',').next().unwrap_or(bootstrap).trim()
}

/// Whether `server` (`host:port`) names this machine's loopback interface,
/// the only place local mode starts a broker.
pub fn is_loopback(server: &str) -> bool {
    let host = server
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(server)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether something accepts TCP connections on `server` (`host:port`).
pub async fn is_listening(server: &str) -> bool {
    let Ok(addrs) = server.to_socket_addrs() else {
        return false;
    };
    for addr in addrs {
        let connect = tokio::net::TcpStream::connect(addr);
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), connect).await {
            return true;
        }
    }
    false
}

/// Waits until `server` accepts connections, up to `timeout`.
pub async fn wait_listening(server: &str, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if is_listening(server).await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The broker process: Tansu listening on (and advertising) `server`, its
/// data in `<data_dir>/tansu.db` (SQLite; Tansu resolves the storage URL
/// against its working directory, which is `data_dir`).
pub fn broker_process(tansu: &Path, server: &str, data_dir: &Path) -> ProcessSpec {
    ProcessSpec {
        name: Role::Broker.as_str().to_owned(),
        role: Role::Broker,
        ordinal: 0,
        program: tansu.to_owned(),
        args: chatpipe_procs::broker_args(server),
        env: Default::default(),
        cwd: Some(data_dir.to_owned()),
        listen: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_server_and_loopback() {
        assert_eq!(first_server("127.0.0.1:9092, b:9092"), "127.0.0.1:9092");
        assert_eq!(first_server("x:1"), "x:1");
        assert!(is_loopback("127.0.0.1:9092"));
        assert!(is_loopback("localhost:9092"));
        assert!(is_loopback("[::1]:9092"));
        assert!(!is_loopback("kafka-0.kafka:9092"));
        assert!(!is_loopback("10.0.0.1:9092"));
    }

    #[test]
    fn broker_process_uses_file_storage_in_the_data_dir() {
        let p = broker_process(
            Path::new("/x/tansu"),
            "127.0.0.1:9092",
            Path::new("/s/broker"),
        );
        assert_eq!(p.name, "broker");
        assert_eq!(p.role, Role::Broker);
        // `sqlite://tansu.db` is resolved against the working directory.
        assert_eq!(p.cwd.as_deref(), Some(Path::new("/s/broker")));
        assert_eq!(p.program, Path::new("/x/tansu"));
        assert_eq!(p.args, chatpipe_procs::broker_args("127.0.0.1:9092"));
        assert!(p.args.iter().any(|a| a == "sqlite://tansu.db"));
    }

    #[tokio::test]
    async fn listening_is_detected() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        assert!(is_listening(&addr).await);
        drop(l);
        assert!(!is_listening(&addr).await);
        assert!(!is_listening("not-an-address").await);
    }
}
