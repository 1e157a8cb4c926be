//! Settings of `chatpipe-api`: its command line ([`ApiArgs`], clap derive;
//! every flag also reads an environment variable) and what a deployment
//! sets of it ([`ApiSettings`]).

use std::net::SocketAddr;
use std::time::Duration;

use crate::channels::{ChannelArgs, Channels};
use crate::common::{parse_duration, LogArgs, PostgresArgs, Redacted, ServiceSettings, LISTEN_ENV};
use crate::env::EnvWriter;

/// Page size of listings when `limit` is absent.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest accepted `limit` of listings.
pub const MAX_LIMIT: i64 = 500;

/// Shortest accepted `--jwt-secret`, in bytes (HS256 wants at least the
/// hash's output size).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// The variable that holds the api's JWT signing secret
/// ([`ApiArgs::jwt_secret`]): set from a Secret by the operator and by
/// local mode, never written to a ConfigMap (so [`ApiSettings::to_env`]
/// never writes it).
pub fn jwt_secret_env() -> String {
    crate::env::env_name(&<ApiArgs as clap::CommandFactory>::command(), "jwt_secret")
}

/// Settings of `chatpipe-api`; every flag also reads an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "chatpipe-api",
    version,
    about = "chatpipe query API and conversation viewer"
)]
pub struct ApiArgs {
    /// Address the HTTP server listens on.
    #[arg(long, env = LISTEN_ENV, default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// Postgres connection.
    #[command(flatten)]
    pub postgres: PostgresArgs,
    /// Role assumed on every connection (`SET ROLE` at connect), e.g.
    /// `chatpipe_api_readonly` created by migration V300; empty keeps the
    /// login role. Connections are read-only either way.
    #[arg(long, env = "CHATPIPE_API_DB_ROLE", default_value = "")]
    pub db_role: String,
    /// Longest a single query may run before Postgres cancels it.
    #[arg(long, env = "CHATPIPE_API_STATEMENT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub statement_timeout: Duration,
    /// Page size of listings when `limit` is absent.
    #[arg(long, env = "CHATPIPE_API_DEFAULT_LIMIT", default_value_t = DEFAULT_LIMIT)]
    pub default_limit: i64,
    /// Largest accepted `limit` of listings.
    #[arg(long, env = "CHATPIPE_API_MAX_LIMIT", default_value_t = MAX_LIMIT)]
    pub max_limit: i64,
    /// HS256 secret that signs and verifies the api's own access tokens
    /// (at least 32 bytes). Setting it (or `--oidc-issuer`) turns
    /// authentication on: every data endpoint then needs
    /// `Authorization: Bearer <token>`, and `/auth/token` and `/agents`
    /// are served. Unset (with no issuer), the api is open, as the original
    /// challenge describes, and warns at start. Deployments hand it over
    /// from a Secret ([`jwt_secret_env`]), never through a ConfigMap.
    #[arg(long, env = "CHATPIPE_API_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Redacted>,
    /// Lifetime of the access tokens `/auth/token` issues.
    #[arg(long, env = "CHATPIPE_API_ACCESS_TOKEN_TTL", default_value = "15m", value_parser = parse_duration)]
    pub access_token_ttl: Duration,
    /// Lifetime of the refresh tokens `/auth/token` issues (each refresh
    /// replaces the token with a new one of this lifetime).
    #[arg(long, env = "CHATPIPE_API_REFRESH_TOKEN_TTL", default_value = "7d", value_parser = parse_duration)]
    pub refresh_token_ttl: Duration,
    /// OpenID Connect issuer whose RS256/ES256 tokens are accepted (the
    /// `iss` they must carry, e.g. `https://idp.example.com/realms/x`).
    /// Setting it turns authentication on.
    #[arg(long, env = "CHATPIPE_API_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// Where the issuer's JWKS is fetched. Default: the `jwks_uri` of
    /// `{issuer}/.well-known/openid-configuration`, else
    /// `{issuer}/.well-known/jwks.json`.
    #[arg(long, env = "CHATPIPE_API_OIDC_JWKS_URL")]
    pub oidc_jwks_url: Option<String>,
    /// Audience (`aud`) the issuer's tokens must carry. Default:
    /// `chatpipe-api`.
    #[arg(long, env = "CHATPIPE_API_OIDC_AUDIENCE")]
    pub oidc_audience: Option<String>,
    /// The pipeline's messenger channels (`GET /channels` lists them with
    /// their counts). The api reads no channel credentials.
    #[command(flatten)]
    pub channels: ChannelArgs,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// What a deployment sets for `chatpipe-api`; `None` leaves the binary's
/// default. Written with [`ApiSettings::to_env`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiSettings {
    /// Listener, database and logs.
    pub service: ServiceSettings,
    /// `--access-token-ttl`.
    pub access_token_ttl: Option<Duration>,
    /// `--refresh-token-ttl`.
    pub refresh_token_ttl: Option<Duration>,
    /// `--oidc-issuer`.
    pub oidc_issuer: Option<String>,
    /// `--oidc-jwks-url`.
    pub oidc_jwks_url: Option<String>,
    /// `--oidc-audience`.
    pub oidc_audience: Option<String>,
    /// `--channels` (names and types only; no credential).
    pub channels: Option<Channels>,
}

impl ApiSettings {
    /// The environment that gives `chatpipe-api` these settings. The JWT
    /// secret is not among them: it comes from a Secret
    /// ([`jwt_secret_env`]).
    pub fn to_env(&self) -> Vec<(String, String)> {
        let mut w = EnvWriter::new::<ApiArgs>();
        self.service.write(&mut w);
        w.set("access_token_ttl", self.access_token_ttl.as_ref())
            .set("refresh_token_ttl", self.refresh_token_ttl.as_ref())
            .set("oidc_issuer", self.oidc_issuer.as_ref())
            .set("oidc_jwks_url", self.oidc_jwks_url.as_ref())
            .set("oidc_audience", self.oidc_audience.as_ref())
            .set("channels", self.channels.as_ref());
        w.finish()
    }

    /// The settings a parsed command line holds (every one set).
    pub fn from_args(a: &ApiArgs) -> Self {
        Self {
            service: ServiceSettings::from_args(a.listen, &a.postgres, &a.log),
            access_token_ttl: Some(a.access_token_ttl),
            refresh_token_ttl: Some(a.refresh_token_ttl),
            oidc_issuer: a.oidc_issuer.clone(),
            oidc_jwks_url: a.oidc_jwks_url.clone(),
            oidc_audience: a.oidc_audience.clone(),
            channels: Some(a.channels.channels.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn auth_defaults_and_secret_handling() {
        let a = ApiArgs::try_parse_from(["chatpipe-api"]).unwrap();
        assert_eq!(a.jwt_secret, None);
        assert_eq!(a.access_token_ttl, Duration::from_secs(15 * 60));
        assert_eq!(a.refresh_token_ttl, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(a.oidc_issuer, None);
        assert_eq!(jwt_secret_env(), "CHATPIPE_API_JWT_SECRET");
        let a = ApiArgs::try_parse_from(["chatpipe-api", "--jwt-secret", "s3cr3t-value"]).unwrap();
        assert!(!format!("{a:?}").contains("s3cr3t-value"));
        // The secret never reaches the environment a deployment writes.
        let env = ApiSettings::from_args(&a).to_env();
        assert!(env
            .iter()
            .all(|(k, v)| k != &jwt_secret_env() && !v.contains("s3cr3t")));
    }

    #[test]
    fn channels_are_read_and_written_without_credentials() {
        let a = ApiArgs::try_parse_from(["chatpipe-api"]).unwrap();
        assert!(a.channels.channels.is_empty());
        let a = ApiArgs::try_parse_from([
            "chatpipe-api",
            "--channels",
            r#"[{"name":"tg","type":"telegram"},{"name":"wa","type":"whatsappCloud"}]"#,
        ])
        .unwrap();
        assert_eq!(a.channels.channels.0.len(), 2);
        let settings = ApiSettings::from_args(&a);
        let env = settings.to_env();
        let (_, value) = env
            .iter()
            .find(|(k, _)| k == crate::channels::CHANNELS_ENV)
            .expect("the channels are written");
        assert_eq!(
            crate::channels::parse_channels(value).unwrap(),
            a.channels.channels
        );
        assert!(env.iter().all(|(k, _)| !k.starts_with("CHATPIPE_CHANNEL_")));
        assert!(ApiArgs::try_parse_from(["chatpipe-api", "--channels", "[{}]"]).is_err());
    }
}
