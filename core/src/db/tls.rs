//! TLS for Postgres connections with rustls (the `ring` provider, set
//! explicitly: no process-wide default is needed), following libpq's
//! `sslmode` table:
//!
//! | sslmode | TLS | verifies |
//! |---|---|---|
//! | `disable` | never | - |
//! | `allow` | only if plain is refused | as `require` |
//! | `prefer` | if the server offers it; plain if TLS fails | as `require` |
//! | `require` | always | nothing, or the chain when `sslrootcert` is given |
//! | `verify-ca` | always | the chain against the trusted CAs |
//! | `verify-full` | always | the chain and the host name |
//!
//! Without `sslrootcert`, `verify-*` trust the platform's store
//! (rustls-native-certs: `/etc/ssl/certs` on Debian, `SSL_CERT_FILE` /
//! `SSL_CERT_DIR` when set). [`attempts`] (pure) says which connections are
//! tried for a mode; [`PgTls`] makes them.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, WebPkiServerVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode as WireSslMode;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::conninfo::{RootCert, SslMode, SslParams};

/// What is checked of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Nothing (the connection is encrypted, the server unauthenticated).
    None,
    /// The chain up to a trusted CA, any host name (`verify-ca`).
    Chain,
    /// The chain and the host name (`verify-full`).
    ChainAndHostName,
}

impl Verification {
    /// libpq's rule: `verify-full` and `verify-ca` as named; any weaker
    /// mode verifies the chain when `sslrootcert` is given (as libpq does
    /// whenever it finds a root certificate), nothing otherwise.
    pub fn of(params: &SslParams) -> Verification {
        match params.mode {
            SslMode::VerifyFull => Verification::ChainAndHostName,
            SslMode::VerifyCa => Verification::Chain,
            _ if params.root_cert.is_some() => Verification::Chain,
            _ => Verification::None,
        }
    }
}

/// One connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Without TLS.
    Plain,
    /// Ask for TLS; go on in plain text if the server does not offer it.
    OfferTls,
    /// TLS or nothing.
    Tls,
}

/// The attempts made, in order, to connect with `mode`; the first that
/// succeeds is used. `tcp` is false when every host is a Unix socket, which
/// never carries TLS (libpq ignores `sslmode` there).
pub fn attempts(mode: SslMode, tcp: bool) -> &'static [Attempt] {
    if !tcp {
        return &[Attempt::Plain];
    }
    match mode {
        SslMode::Disable => &[Attempt::Plain],
        SslMode::Allow => &[Attempt::Plain, Attempt::Tls],
        SslMode::Prefer => &[Attempt::OfferTls, Attempt::Plain],
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => &[Attempt::Tls],
    }
}

/// The TLS half of a Postgres connection configuration: the `sslmode`
/// and, unless it is `disable`, a rustls connector verifying what the
/// mode requires. Cheap to clone.
#[derive(Clone)]
pub struct PgTls {
    mode: SslMode,
    verification: Verification,
    /// Where the trusted CAs come from, when anything is verified.
    trust: Option<String>,
    connector: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTls")
            .field("mode", &self.mode)
            .field("verification", &self.verification)
            .finish_non_exhaustive()
    }
}

impl PgTls {
    /// Builds the connector for `params`, reading the CA bundle and client
    /// certificate files now (so a missing file is an error at start, not
    /// at the first connection).
    pub fn new(params: &SslParams) -> anyhow::Result<PgTls> {
        let verification = Verification::of(params);
        let connector = match params.mode {
            SslMode::Disable => None,
            _ => Some(MakeRustlsConnect::new(client_config(params, verification)?)),
        };
        let trust = match (verification, &params.root_cert) {
            (Verification::None, _) => None,
            (_, Some(RootCert::File(path))) => Some(path.display().to_string()),
            (_, Some(RootCert::System) | None) => Some("the system CA store".to_owned()),
        };
        Ok(PgTls {
            mode: params.mode,
            verification,
            trust,
            connector,
        })
    }

    /// For messages: `sslmode=verify-full, CAs from the system CA store`.
    pub fn describe(&self) -> String {
        match &self.trust {
            Some(trust) => format!("sslmode={}, CAs from {trust}", self.mode),
            None => format!("sslmode={}", self.mode),
        }
    }

    /// The `sslmode` this connector follows.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// What it checks of the server certificate.
    pub fn verification(&self) -> Verification {
        self.verification
    }

    /// Connects with `config` (whose own `ssl_mode` is ignored) as the
    /// mode prescribes, the connection driven by a spawned task. When every
    /// attempt fails, the error is that of the attempt with TLS, which says
    /// more than a plain-text refusal.
    pub async fn open(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
        self.open_forwarding(config, None).await
    }

    /// As [`PgTls::open`], and the connection's notifications (`LISTEN`)
    /// are sent to the returned receiver instead of being dropped.
    pub async fn open_listening(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<
        (
            Client,
            tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
            JoinHandle<()>,
        ),
        tokio_postgres::Error,
    > {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (client, handle) = self.open_forwarding(config, Some(tx)).await?;
        Ok((client, rx, handle))
    }

    async fn open_forwarding(
        &self,
        config: &tokio_postgres::Config,
        notifications: Option<Notifications>,
    ) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
        let tcp = config
            .get_hosts()
            .iter()
            .any(|h| matches!(h, tokio_postgres::config::Host::Tcp(_)))
            || !config.get_hostaddrs().is_empty();
        let mut reported: Option<tokio_postgres::Error> = None;
        for &attempt in attempts(self.mode, tcp) {
            match self.attempt(config, attempt, notifications.clone()).await {
                Ok(connected) => return Ok(connected),
                Err(e) => {
                    if reported.is_none() || attempt != Attempt::Plain {
                        reported = Some(e);
                    }
                }
            }
        }
        match reported {
            Some(e) => Err(e),
            // `attempts` is never empty; connect once more to get an error.
            None => self.attempt(config, Attempt::Plain, notifications).await,
        }
    }

    async fn attempt(
        &self,
        config: &tokio_postgres::Config,
        attempt: Attempt,
        notifications: Option<Notifications>,
    ) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
        let mut config = config.clone();
        match (attempt, &self.connector) {
            (Attempt::OfferTls, Some(tls)) | (Attempt::Tls, Some(tls)) => {
                config.ssl_mode(if attempt == Attempt::Tls {
                    WireSslMode::Require
                } else {
                    WireSslMode::Prefer
                });
                let (client, connection) = config.connect(tls.clone()).await?;
                Ok((client, drive_with(connection, notifications)))
            }
            _ => {
                config.ssl_mode(WireSslMode::Disable);
                let (client, connection) = config.connect(NoTls).await?;
                Ok((client, drive_with(connection, notifications)))
            }
        }
    }
}

/// Where a listening connection's notifications go.
type Notifications = tokio::sync::mpsc::UnboundedSender<tokio_postgres::Notification>;

/// Runs a connection until it ends: plainly, or forwarding its
/// notifications to `notifications` (the receiver sees the channel close
/// when the connection ends).
fn drive_with<S, T>(
    connection: tokio_postgres::Connection<S, T>,
    notifications: Option<Notifications>,
) -> JoinHandle<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Some(tx) = notifications else {
        return drive(connection);
    };
    let mut connection = connection;
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    let _ = tx.send(n);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Postgres connection ended");
                    return;
                }
                None => return,
            }
        }
    })
}

/// Runs a connection until it ends, logging how it ended badly.
fn drive<F>(connection: F) -> JoinHandle<()>
where
    F: Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "Postgres connection ended");
        }
    })
}

impl deadpool_postgres::Connect for PgTls {
    fn connect(
        &self,
        pg_config: &tokio_postgres::Config,
    ) -> Pin<
        Box<
            dyn Future<Output = Result<(Client, JoinHandle<()>), tokio_postgres::Error>>
                + Send
                + '_,
        >,
    > {
        let config = pg_config.clone();
        Box::pin(async move { self.open(&config).await })
    }
}

/// The rustls configuration for `params`.
fn client_config(params: &SslParams, verification: Verification) -> anyhow::Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = match verification {
        Verification::None => Arc::new(NoVerification { algorithms }),
        Verification::Chain => Arc::new(ChainOnly {
            roots: Arc::new(root_store(params.root_cert.as_ref())?),
            algorithms,
        }),
        Verification::ChainAndHostName => WebPkiServerVerifier::builder_with_provider(
            Arc::new(root_store(params.root_cert.as_ref())?),
            provider.clone(),
        )
        .build()
        .context("building the certificate verifier")?,
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (&params.client_cert, &params.client_key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .context("using the client certificate (sslcert/sslkey)")?,
        _ => builder.with_no_client_auth(),
    };
    // As libpq 17 does; servers before 17 ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// The trusted CAs: `sslrootcert`'s file, or the platform's store.
fn root_store(root: Option<&RootCert>) -> anyhow::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match root {
        Some(RootCert::File(path)) => {
            for cert in read_certs(path)? {
                store.add(cert).with_context(|| {
                    format!("sslrootcert {}: invalid CA certificate", path.display())
                })?;
            }
        }
        Some(RootCert::System) | None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                anyhow::bail!(
                    "no trusted CA certificates in the system store{why}; \
                     install ca-certificates or set sslrootcert=/path/to/ca.pem"
                );
            }
        }
    }
    Ok(store)
}

/// Every certificate of the PEM file at `path` (at least one).
fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading certificates from {}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no PEM certificate in {}", path.display());
    }
    Ok(certs)
}

/// The private key of the PEM file at `path` (PKCS#8, PKCS#1 or SEC1).
fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("reading the private key sslkey={}", path.display()))
}

/// `require` without `sslrootcert`: any certificate is accepted; the
/// handshake signatures are still checked against it.
#[derive(Debug)]
struct NoVerification {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the host name is not
/// checked.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(mode: SslMode, root: Option<RootCert>) -> SslParams {
        SslParams {
            mode,
            root_cert: root,
            ..SslParams::default()
        }
    }

    #[test]
    fn verification_follows_libpq() {
        let file = || Some(RootCert::File("/ca.pem".into()));
        assert_eq!(
            Verification::of(&params(SslMode::Require, None)),
            Verification::None
        );
        assert_eq!(
            Verification::of(&params(SslMode::Prefer, None)),
            Verification::None
        );
        assert_eq!(
            Verification::of(&params(SslMode::Require, file())),
            Verification::Chain
        );
        assert_eq!(
            Verification::of(&params(SslMode::VerifyCa, None)),
            Verification::Chain
        );
        assert_eq!(
            Verification::of(&params(SslMode::VerifyFull, file())),
            Verification::ChainAndHostName
        );
    }

    #[test]
    fn attempts_follow_libpq() {
        use Attempt::*;
        assert_eq!(attempts(SslMode::Disable, true), &[Plain]);
        assert_eq!(attempts(SslMode::Allow, true), &[Plain, Tls]);
        assert_eq!(attempts(SslMode::Prefer, true), &[OfferTls, Plain]);
        for m in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            assert_eq!(attempts(m, true), &[Tls]);
            assert_eq!(attempts(m, false), &[Plain], "Unix sockets carry no TLS");
        }
    }

    #[test]
    fn a_missing_ca_file_is_an_error_at_build_time() {
        let e = PgTls::new(&params(
            SslMode::VerifyFull,
            Some(RootCert::File("/nonexistent/ca.pem".into())),
        ))
        .unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/ca.pem"), "{e:#}");
    }

    #[test]
    fn disable_needs_no_connector() {
        let tls = PgTls::new(&params(SslMode::Disable, None)).unwrap();
        assert!(tls.connector.is_none());
        assert_eq!(tls.mode(), SslMode::Disable);
    }
}
