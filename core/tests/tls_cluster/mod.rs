//! A private Postgres cluster with `ssl=on`, started for one test process
//! and stopped when dropped (also on panic): a test CA made with rcgen, a
//! server certificate for `localhost` and `127.0.0.1`, a client
//! certificate for the role `certuser`, and a `pg_hba.conf` that refuses
//! every connection without TLS.
//!
//! `initdb` and `postgres` refuse to run as root: as root, every server
//! command runs as `nobody` (through `runuser`), which owns the cluster's
//! directory.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// The unprivileged user that runs the server when the tests run as root.
const SERVER_USER: &str = "nobody";

/// A running TLS-only Postgres cluster.
pub struct TlsCluster {
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    /// The cluster's directory: `data/`, certificates, the Unix socket.
    pub dir: PathBuf,
    bin: PathBuf,
    run_as: Option<String>,
    _temp: tempfile::TempDir,
}

/// A CA (certificate and key), able to sign more certificates.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-signing the CA");
        TestCa { cert, key }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf certificate (PEM) and its key (PEM) with common name `cn`,
    /// subject alternative names `sans` and extended key usage `usage`.
    pub fn issue(
        &self,
        cn: &str,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let key = KeyPair::generate().expect("leaf key");
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signing the leaf");
        (cert.pem(), key.serialize_pem())
    }
}

/// The directory of `initdb`, `pg_ctl` and `postgres`: `pg_config
/// --bindir`, else the newest `/usr/lib/postgresql/<ver>/bin`.
fn postgres_bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").is_file() {
            return dir;
        }
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "initdb not found (neither `pg_config --bindir` nor /usr/lib/postgresql/*/bin): \
             install the PostgreSQL server (scripts/setup.sh does)"
        ),
    }
}

fn output_of(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl TlsCluster {
    /// Creates and starts the cluster, its server certificate signed by
    /// `ca` for `localhost` and `127.0.0.1`; `ca` also signs the accepted
    /// client certificates.
    pub fn start(ca: &TestCa) -> TlsCluster {
        let bin = postgres_bindir();
        let run_as = (output_of("id", &["-u"]) == "0").then(|| SERVER_USER.to_owned());
        let temp = tempfile::Builder::new()
            .prefix("cp-pg-tls-")
            .tempdir()
            .expect("temp dir");
        let dir = temp.path().to_path_buf();
        let owner = run_as.as_deref().map(|user| {
            let uid: u32 = output_of("id", &["-u", user]).parse().expect("uid");
            let gid: u32 = output_of("id", &["-g", user]).parse().expect("gid");
            (uid, gid)
        });
        let give = |path: &Path| {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
            }
        };
        give(&dir);

        let write = |name: &str, text: &str, mode: u32| {
            let path = dir.join(name);
            fs::write(&path, text).expect("writing a cluster file");
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
            give(&path);
            path
        };
        let (server_cert, server_key) = ca.issue(
            "localhost",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        write("ca.crt", &ca.pem(), 0o644);
        write("server.crt", &server_cert, 0o644);
        write("server.key", &server_key, 0o600);

        let port = free_port();
        let data = dir.join("data");
        let cluster = TlsCluster {
            port,
            dir: dir.clone(),
            bin,
            run_as,
            _temp: temp,
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let conf = format!(
            "\n# chatpipe pg_tls test\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{dir}'\n\
             ssl = on\n\
             ssl_cert_file = '{dir}/server.crt'\n\
             ssl_key_file = '{dir}/server.key'\n\
             ssl_ca_file = '{dir}/ca.crt'\n\
             password_encryption = 'scram-sha-256'\n\
             fsync = off\n\
             max_connections = 40\n",
            dir = dir.display()
        );
        let conf_path = data.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf_path).expect("postgresql.conf");
        text.push_str(&conf);
        fs::write(&conf_path, text).expect("postgresql.conf");
        fs::write(
            data.join("pg_hba.conf"),
            "local     all all                   trust\n\
             hostssl   all plainuser 127.0.0.1/32 reject\n\
             hostnossl all plainuser 127.0.0.1/32 trust\n\
             hostssl   all certuser 127.0.0.1/32 cert\n\
             hostssl   all pwuser   127.0.0.1/32 scram-sha-256\n\
             hostssl   all all      127.0.0.1/32 trust\n\
             hostnossl all all      127.0.0.1/32 reject\n\
             host      all all      ::1/128      reject\n",
        )
        .expect("pg_hba.conf");
        cluster.run(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-l",
                &dir.join("server.log").to_string_lossy(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        cluster
    }

    /// A key=value connection string over the Unix socket (no TLS there)
    /// as the superuser.
    pub fn socket_conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.dir.display(),
            self.port
        )
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Writes `text` as `name` in the cluster's directory (readable by
    /// the tests) and returns its path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        fs::write(&path, text).expect("writing a test file");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} failed: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self
            .command("pg_ctl")
            .args([
                "-D",
                &data.to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
    }
}
