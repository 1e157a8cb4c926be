//! Kafka over TLS against a real TLS endpoint.
//!
//! Tansu 0.6.0 accepts `--cert`/`--key` but never uses them (its broker
//! builds a TLS acceptor and serves every connection in plaintext), so the
//! TLS endpoint here is Debian's `stunnel` in front of a private Tansu: the
//! broker listens in plaintext on a private port and *advertises* the
//! stunnel port, so every connection a client makes after bootstrap goes
//! through TLS too. The certificates come from a test CA made with `rcgen`.
//!
//! Checked: a topic is created (`ensure_topic`), a record produced and
//! consumed over TLS with the test CA; `chatpipe-admin ensure-topic` does the
//! same from its flags' environment variables; a wrong CA, a certificate
//! for another host name and plaintext to the TLS port all fail (the first
//! two with OpenSSL's certificate error in the message); a listener that
//! requires client certificates accepts ours and refuses a client without.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chatpipe_core::kafka::{
    consumer_config, ensure_topic, producer_config, topic_partitions, ClientCert, KafkaConnection,
    KafkaSasl, KafkaSecurity, KafkaTls, SaslMechanism, TopicState,
};
use chatpipe_settings::common::Redacted;
use chatpipe_tests::{free_port, spawn_tied, tansu_path, wait_for_broker};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A child process killed when the value is dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The test's certificates, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A CA (`ca.crt`), another CA that signed nothing here (`other-ca.crt`),
    /// and, signed by the CA: a server certificate for localhost and
    /// 127.0.0.1 (`server`), one for another host name (`wrong-name`) and a
    /// client certificate (`client`), each `<name>.crt` + `<name>.key`.
    fn generate() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().expect("a temporary directory"),
        };
        let (ca_cert, ca_key) = ca("chatpipe test CA");
        std::fs::write(pki.path("ca.crt"), ca_cert.pem()).unwrap();
        let (other, _) = ca("another CA");
        std::fs::write(pki.path("other-ca.crt"), other.pem()).unwrap();
        for (name, sans, usage) in [
            (
                "server",
                vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            (
                "wrong-name",
                vec!["kafka.invalid".to_owned()],
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            (
                "client",
                vec!["chatpipe-client".to_owned()],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
        ] {
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
            std::fs::write(pki.path(&format!("{name}.crt")), cert.pem()).unwrap();
            std::fs::write(pki.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        pki
    }
}

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert, key)
}

/// Debian's `stunnel` (package `stunnel4`): `$CHATPIPE_STUNNEL`, else on
/// PATH. Missing is a failure, not a skip: `scripts/setup.sh` installs it.
fn stunnel_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CHATPIPE_STUNNEL") {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("stunnel"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "stunnel not found: the Kafka TLS test needs Debian's stunnel4 \
             (scripts/setup.sh installs it: apt-get install stunnel4) or CHATPIPE_STUNNEL"
        )
    })
}

/// Starts stunnel accepting TLS on `127.0.0.1:<accept>` with `<cert>.crt`
/// and forwarding to `connect`; with `client_ca` it requires a client
/// certificate signed by that CA. Waits until the port accepts.
fn stunnel(
    pki: &Pki,
    name: &str,
    accept: u16,
    connect: &str,
    cert: &str,
    client_ca: Option<&Path>,
) -> Killed {
    let mut conf = format!(
        "foreground = yes\npid =\nsyslog = no\ndebug = warning\n\
         [{name}]\naccept = 127.0.0.1:{accept}\nconnect = {connect}\n\
         cert = {}\nkey = {}\n",
        pki.path(&format!("{cert}.crt")).display(),
        pki.path(&format!("{cert}.key")).display(),
    );
    if let Some(ca) = client_ca {
        conf.push_str(&format!(
            "verifyChain = yes\nrequireCert = yes\nCAfile = {}\n",
            ca.display()
        ));
    }
    let conf_path = pki.path(&format!("stunnel-{name}.conf"));
    std::fs::write(&conf_path, conf).unwrap();
    let log = std::fs::File::create(pki.path(&format!("stunnel-{name}.log"))).unwrap();
    let mut cmd = Command::new(stunnel_path());
    cmd.arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut child = Killed(spawn_tied(cmd).expect("starting stunnel"));
    let deadline = std::time::Instant::now() + TIMEOUT;
    while TcpStream::connect(("127.0.0.1", accept)).is_err() {
        if let Ok(Some(status)) = child.0.try_wait() {
            let log = std::fs::read_to_string(pki.path(&format!("stunnel-{name}.log")))
                .unwrap_or_default();
            panic!("stunnel {name} exited ({status}): {log}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stunnel {name} did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// A private Tansu listening in plaintext on `plain` and advertising the
/// TLS port `tls` (where stunnel listens), with file storage in `dir`;
/// with `authentication` every client must authenticate with SASL first.
async fn tansu(dir: &Path, plain: u16, tls: u16, authentication: bool) -> Killed {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("tansu.log"))
        .unwrap();
    let mut cmd = Command::new(tansu_path().expect("tansu"));
    cmd.args([
        "broker",
        "--listener-url",
        &format!("tcp://127.0.0.1:{plain}"),
        "--advertised-listener-url",
        &format!("tcp://127.0.0.1:{tls}"),
        "--storage-engine",
        "sqlite://tansu.db",
    ])
    .current_dir(dir)
    .env("RUST_LOG", "warn")
    .stdin(Stdio::null())
    .stdout(log.try_clone().unwrap())
    .stderr(log);
    if authentication {
        cmd.arg("--authentication");
    }
    let child = Killed(spawn_tied(cmd).expect("starting tansu"));
    if authentication {
        // Metadata needs a SASL login now: wait for the port only.
        let deadline = std::time::Instant::now() + TIMEOUT;
        while TcpStream::connect(("127.0.0.1", plain)).is_err() {
            assert!(std::time::Instant::now() < deadline, "tansu did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    } else {
        wait_for_broker(&format!("127.0.0.1:{plain}"), TIMEOUT)
            .await
            .expect("tansu did not answer");
    }
    child
}

fn tls(port: u16, ca: PathBuf, client_cert: Option<ClientCert>) -> KafkaConnection {
    KafkaConnection {
        brokers: format!("127.0.0.1:{port}"),
        security: KafkaSecurity {
            tls: Some(KafkaTls {
                ca_file: Some(ca),
                client_cert,
            }),
            sasl: None,
        },
    }
}

/// Waits until metadata answers over `conn` (stunnel and broker up).
async fn wait_metadata(conn: &KafkaConnection) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        match topic_partitions(conn, "__probe", Duration::from_secs(5)).await {
            Ok(_) => return,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                panic!("no metadata over TLS: {e:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The error of a metadata request over `conn`, which must fail.
async fn metadata_error(conn: &KafkaConnection) -> String {
    match topic_partitions(conn, "__probe", Duration::from_secs(6)).await {
        Ok(found) => panic!("metadata over {conn:?} must fail, found {found:?}"),
        Err(e) => format!("{e:#}"),
    }
}

/// Produces a record to `topic` over `conn` and consumes it back.
async fn round_trip(conn: &KafkaConnection, topic: &str) {
    let producer: FutureProducer = producer_config(conn, TIMEOUT, Duration::ZERO)
        .create()
        .unwrap();
    let payload = format!("over tls {}", Uuid::new_v4());
    let delivered = producer
        .send(
            FutureRecord::to(topic)
                .key("conversation-1")
                .payload(payload.as_bytes()),
            TIMEOUT,
        )
        .await
        .map_err(|(e, _)| e)
        .expect("the record is acknowledged over TLS");
    let consumer: BaseConsumer = consumer_config(conn, "kafka-tls-test", Duration::from_millis(10))
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, delivered.partition, Offset::Offset(delivered.offset))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    let read = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the record was not consumed over TLS"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => break m.payload().map(|p| p.to_vec()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => panic!("consuming over TLS: {e}"),
        }
    };
    assert_eq!(read.as_deref(), Some(payload.as_bytes()));
}

#[tokio::test]
async fn clients_produce_consume_and_create_topics_over_tls() {
    let pki = Pki::generate();
    let storage = tempfile::tempdir().unwrap();
    let (plain, tls_port, wrong_port, mtls_port) =
        (free_port(), free_port(), free_port(), free_port());
    let backend = format!("127.0.0.1:{plain}");
    let _broker = tansu(storage.path(), plain, tls_port, false).await;
    let _tls = stunnel(&pki, "tls", tls_port, &backend, "server", None);
    let _wrong = stunnel(&pki, "wrong-name", wrong_port, &backend, "wrong-name", None);
    let _mtls = stunnel(
        &pki,
        "mtls",
        mtls_port,
        &backend,
        "server",
        Some(&pki.path("ca.crt")),
    );

    let conn = tls(tls_port, pki.path("ca.crt"), None);
    wait_metadata(&conn).await;

    // A topic, a record in, the record out: every client over TLS.
    let topic = format!("tls-{}", Uuid::new_v4().simple());
    let state = ensure_topic(&conn, &topic, 2, 1, TIMEOUT).await.unwrap();
    assert_eq!(state, TopicState::Created);
    assert_eq!(
        ensure_topic(&conn, &topic, 2, 1, TIMEOUT).await.unwrap(),
        TopicState::Exists
    );
    round_trip(&conn, &topic).await;

    // chatpipe-admin ensure-topic over TLS, from its variables.
    let admin_topic = format!("tls-admin-{}", Uuid::new_v4().simple());
    let out = Command::new(chatpipe_tests::binary("chatpipe-admin"))
        .arg("ensure-topic")
        .env("CHATPIPE_KAFKA_BROKERS", format!("127.0.0.1:{tls_port}"))
        .env("CHATPIPE_KAFKA_TOPIC", &admin_topic)
        .env("CHATPIPE_KAFKA_TLS_CA_FILE", pki.path("ca.crt"))
        .env("CHATPIPE_KAFKA_PARTITIONS", "3")
        .env("CHATPIPE_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chatpipe-admin ensure-topic over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        topic_partitions(&conn, &admin_topic, TIMEOUT)
            .await
            .unwrap(),
        Some(3)
    );

    // A CA that did not sign the broker's certificate.
    let e = metadata_error(&tls(tls_port, pki.path("other-ca.crt"), None)).await;
    println!("wrong CA: {e}");
    assert!(e.contains("certificate verify failed"), "{e}");
    // The system's CA store does not know the test CA either.
    let mut system = conn.clone();
    system.security.tls = Some(KafkaTls::default());
    let e = metadata_error(&system).await;
    assert!(e.contains("certificate verify failed"), "{e}");
    // The right CA, but a certificate for another host name.
    let e = metadata_error(&tls(wrong_port, pki.path("ca.crt"), None)).await;
    println!("wrong host name: {e}");
    assert!(e.contains("certificate verify failed"), "{e}");
    // Plaintext to the TLS port.
    let e = metadata_error(&KafkaConnection::plaintext(&format!(
        "127.0.0.1:{tls_port}"
    )))
    .await;
    assert!(!e.is_empty());

    // Mutual TLS: our client certificate is accepted, no certificate is not.
    let client = ClientCert {
        cert_file: pki.path("client.crt"),
        key_file: pki.path("client.key"),
    };
    let mtls = tls(mtls_port, pki.path("ca.crt"), Some(client));
    assert_eq!(
        topic_partitions(&mtls, &topic, TIMEOUT).await.unwrap(),
        Some(2)
    );
    metadata_error(&tls(mtls_port, pki.path("ca.crt"), None)).await;
}

/// Creates SCRAM users with Tansu's own CLI (`tansu user create`, which
/// the broker only answers before authentication is on).
fn create_user(plain: u16, mechanism: &str, name: &str, password: &str) {
    let out = Command::new(tansu_path().expect("tansu"))
        .args([
            "user",
            "create",
            "--broker",
            &format!("tcp://127.0.0.1:{plain}"),
            "--mechanism",
            mechanism,
            name,
            password,
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tansu user create {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SASL over TLS with the test CA.
fn sasl_tls(
    port: u16,
    ca: PathBuf,
    mechanism: SaslMechanism,
    username: &str,
    password: &str,
) -> KafkaConnection {
    let mut conn = tls(port, ca, None);
    conn.security.sasl = Some(KafkaSasl {
        mechanism,
        username: username.to_owned(),
        password: Redacted(password.to_owned()),
    });
    conn
}

/// SCRAM against Tansu's SASL (`--authentication`), over TLS: each SCRAM
/// mechanism creates a topic, produces and consumes; a wrong password and
/// an unknown user are refused, and no error shows a password. Tansu
/// 0.6.0 does not offer PLAIN (its SASL library is built without it), so
/// PLAIN is checked only for reaching the broker's handshake; see
/// docs/security-kafka.md.
#[tokio::test]
async fn scram_logins_work_over_tls_and_wrong_passwords_are_refused() {
    let pki = Pki::generate();
    let storage = tempfile::tempdir().unwrap();
    let (plain, tls_port) = (free_port(), free_port());
    let backend = format!("127.0.0.1:{plain}");
    let ca = pki.path("ca.crt");
    let p256 = format!("pw256-{}", Uuid::new_v4().simple());
    let p512 = format!("pw512-{}", Uuid::new_v4().simple());
    {
        // Users first, while the broker still answers unauthenticated
        // requests; they live in its storage.
        let _setup = tansu(storage.path(), plain, tls_port, false).await;
        create_user(plain, "scram256", "alice", &p256);
        create_user(plain, "scram512", "bob", &p512);
    }
    let _broker = tansu(storage.path(), plain, tls_port, true).await;
    let _tls = stunnel(&pki, "sasl", tls_port, &backend, "server", None);

    // Without SASL the broker refuses (TLS alone is not enough).
    metadata_error(&tls(tls_port, ca.clone(), None)).await;

    for (mechanism, user, password) in [
        (SaslMechanism::ScramSha256, "alice", &p256),
        (SaslMechanism::ScramSha512, "bob", &p512),
    ] {
        let conn = sasl_tls(tls_port, ca.clone(), mechanism, user, password);
        assert_eq!(conn.security.protocol(), "sasl_ssl");
        wait_metadata(&conn).await;
        let topic = format!("sasl-{}", Uuid::new_v4().simple());
        assert_eq!(
            ensure_topic(&conn, &topic, 1, 1, TIMEOUT).await.unwrap(),
            TopicState::Created,
            "{mechanism}"
        );
        round_trip(&conn, &topic).await;

        let wrong = format!("not-{password}");
        let e = metadata_error(&sasl_tls(tls_port, ca.clone(), mechanism, user, &wrong)).await;
        println!("{mechanism} with a wrong password: {e}");
        assert!(
            e.contains("SASL SCRAM authentication failed"),
            "{mechanism}: {e}"
        );
        assert!(!e.contains(&wrong) && !e.contains(password.as_str()), "{e}");
        metadata_error(&sasl_tls(
            tls_port,
            ca.clone(),
            mechanism,
            "mallory",
            password,
        ))
        .await;
    }
    // alice is a SCRAM-SHA-256 user only.
    metadata_error(&sasl_tls(
        tls_port,
        ca.clone(),
        SaslMechanism::ScramSha512,
        "alice",
        &p256,
    ))
    .await;

    // PLAIN reaches the broker's handshake, which Tansu 0.6.0 refuses
    // (its SASL library is built without PLAIN): the login itself is
    // unverified here.
    let e = metadata_error(&sasl_tls(
        tls_port,
        ca.clone(),
        SaslMechanism::Plain,
        "carol",
        &p256,
    ))
    .await;
    assert!(e.contains("SASL PLAIN mechanism handshake failed"), "{e}");
    assert!(!e.contains(p256.as_str()), "{e}");
}
