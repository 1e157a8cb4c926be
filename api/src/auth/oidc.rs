//! Tokens of an OpenID Connect issuer: RS256 or ES256 JWTs signed by a key
//! of the issuer's JWKS.
//!
//! A token is accepted when its header's `alg` is RS256 or ES256, its
//! `kid` names a key of the JWKS of that type (RSA for RS256, EC P-256 for
//! ES256; a key with an `alg` must name the same one; symmetric `oct` keys
//! are never used), its signature verifies, `iss` is the configured issuer,
//! `aud` contains the configured audience and `exp` is in the future.
//!
//! The JWKS is fetched on first use and cached. An unknown `kid` makes the
//! api fetch it again (a rotated key), at most once per
//! [`OidcConfig::min_refetch_interval`]; a cached set older than
//! [`OidcConfig::max_age`] is refreshed on next use. Where it comes from:
//! `--oidc-jwks-url`, else the `jwks_uri` of the issuer's discovery
//! document (`{issuer}/.well-known/openid-configuration`), else
//! `{issuer}/.well-known/jwks.json`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

use super::jwt::failure_of;
use super::scopes::{oidc_scopes, ScpClaim};
use super::{AuthFailure, Principal, TokenSource};
use crate::events::{InternalEvent, JwksFetchFailed, JwksFetched};
use crate::metrics::Metrics;

/// Audience required when `--oidc-audience` is not set.
pub const DEFAULT_AUDIENCE: &str = "chatpipe-api";
/// Clock difference tolerated on `exp` between the issuer and the api.
pub const LEEWAY_SECS: u64 = 30;

/// How the api trusts an OIDC issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// The `iss` tokens must carry.
    pub issuer: String,
    /// Where the JWKS is; `None`: discovered.
    pub jwks_url: Option<String>,
    /// The audience tokens must carry.
    pub audience: String,
    /// Least time between two fetches caused by an unknown `kid`.
    pub min_refetch_interval: Duration,
    /// Age after which the cached JWKS is fetched again on next use.
    pub max_age: Duration,
    /// Timeout of each HTTP request to the issuer.
    pub http_timeout: Duration,
}

impl OidcConfig {
    /// The settings of `--oidc-issuer`, `--oidc-jwks-url` and
    /// `--oidc-audience`, with the default intervals (a refetch at most
    /// every 10 s, the set refreshed hourly).
    pub fn new(issuer: &str, jwks_url: Option<&str>, audience: Option<&str>) -> Self {
        OidcConfig {
            issuer: issuer.to_owned(),
            jwks_url: jwks_url.map(str::to_owned),
            audience: audience.unwrap_or(DEFAULT_AUDIENCE).to_owned(),
            min_refetch_interval: Duration::from_secs(10),
            max_age: Duration::from_secs(3600),
            http_timeout: Duration::from_secs(5),
        }
    }

    /// `{issuer}/{path}` with exactly one slash between.
    fn issuer_url(&self, path: &str) -> String {
        format!("{}/{path}", self.issuer.trim_end_matches('/'))
    }
}

/// A usable key of the JWKS.
#[derive(Clone)]
pub struct JwksKey {
    /// The one algorithm this key verifies.
    pub alg: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for JwksKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksKey").field("alg", &self.alg).finish()
    }
}

/// The algorithm a JWK may verify, if it is one this api accepts: an RSA
/// key for RS256, an EC P-256 key for ES256; a key that names another
/// `alg`, or is meant for encryption, is not used.
pub fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return None;
    }
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(by_type),
        Some(KeyAlgorithm::RS256) if by_type == Algorithm::RS256 => Some(by_type),
        Some(KeyAlgorithm::ES256) if by_type == Algorithm::ES256 => Some(by_type),
        Some(_) => None,
    }
}

/// The usable keys of a JWKS document, by `kid`. Keys without a `kid`, of
/// another type, or that do not parse are skipped.
pub fn keys_from_jwks(doc: &serde_json::Value) -> HashMap<String, JwksKey> {
    let mut keys = HashMap::new();
    let Some(list) = doc.get("keys").and_then(|k| k.as_array()) else {
        return keys;
    };
    for value in list {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value.clone()) else {
            continue;
        };
        let (Some(kid), Some(alg)) = (jwk.common.key_id.clone(), jwk_algorithm(&jwk)) else {
            continue;
        };
        if let Ok(key) = DecodingKey::from_jwk(&jwk) {
            keys.insert(kid, JwksKey { alg, key });
        }
    }
    keys
}

/// The claims read from an OIDC token (besides those `jsonwebtoken`
/// checks).
#[derive(Debug, Clone, Deserialize)]
pub struct OidcClaims {
    /// The subject.
    pub sub: String,
    /// Scopes, space separated.
    #[serde(default)]
    pub scope: Option<String>,
    /// Scopes, as an array (or a string).
    #[serde(default)]
    pub scp: Option<ScpClaim>,
    /// A display name for logs.
    #[serde(default)]
    pub preferred_username: Option<String>,
}

impl OidcClaims {
    /// The caller these claims describe.
    pub fn principal(&self) -> Principal {
        Principal {
            subject: self.sub.clone(),
            agent_id: None,
            username: self.preferred_username.clone(),
            role: None,
            scopes: oidc_scopes(self.scope.as_deref(), self.scp.as_ref()),
            source: TokenSource::Oidc,
        }
    }
}

/// The validation rules of an issuer's tokens signed with `alg`.
pub fn oidc_validation(config: &OidcConfig, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&[&config.issuer]);
    v.set_audience(&[&config.audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.leeway = LEEWAY_SECS;
    v
}

#[derive(Default)]
struct Cache {
    keys: HashMap<String, JwksKey>,
    fetched_at: Option<Instant>,
    jwks_url: Option<String>,
}

/// Verifies an issuer's tokens against its cached JWKS.
pub struct OidcVerifier {
    config: OidcConfig,
    http: reqwest::Client,
    cache: RwLock<Cache>,
    /// Held while fetching, so concurrent requests fetch once.
    fetching: Mutex<()>,
    metrics: Metrics,
}

/// What a JWKS lookup found.
enum Lookup {
    Found(JwksKey),
    Unknown,
}

impl OidcVerifier {
    /// A verifier; nothing is fetched until the first token.
    pub fn new(config: OidcConfig, metrics: Metrics) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(config.http_timeout)
            .build()
            .context("building the OIDC HTTP client")?;
        Ok(OidcVerifier {
            config,
            http,
            cache: RwLock::new(Cache::default()),
            fetching: Mutex::new(()),
            metrics,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// Verifies `token` (whose header was already read as `header`).
    pub async fn verify(
        &self,
        token: &str,
        header: &jsonwebtoken::Header,
    ) -> Result<Principal, AuthFailure> {
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(AuthFailure::UnsupportedAlgorithm);
        }
        let kid = header.kid.as_deref().ok_or(AuthFailure::UnknownKey)?;
        let key = match self.key(kid).await? {
            Lookup::Found(k) => k,
            Lookup::Unknown => return Err(AuthFailure::UnknownKey),
        };
        if key.alg != header.alg {
            return Err(AuthFailure::UnsupportedAlgorithm);
        }
        let data = jsonwebtoken::decode::<OidcClaims>(
            token,
            &key.key,
            &oidc_validation(&self.config, key.alg),
        )
        .map_err(|e| failure_of(&e))?;
        Ok(data.claims.principal())
    }

    /// The key `kid`, fetching the JWKS when it is not cached yet, is
    /// stale, or does not hold `kid` and may be fetched again.
    async fn key(&self, kid: &str) -> Result<Lookup, AuthFailure> {
        {
            let cache = self.cache.read().await;
            if !self.must_fetch(&cache, kid) {
                return Ok(cache
                    .keys
                    .get(kid)
                    .cloned()
                    .map_or(Lookup::Unknown, Lookup::Found));
            }
        }
        let _fetching = self.fetching.lock().await;
        // Another request may have fetched while this one waited.
        if self.must_fetch(&*self.cache.read().await, kid) {
            let url = self.cache.read().await.jwks_url.clone();
            match self.fetch(url).await {
                Ok((url, keys)) => {
                    JwksFetched {
                        url: &url,
                        keys: keys.len(),
                    }
                    .emit(&self.metrics);
                    let mut cache = self.cache.write().await;
                    cache.keys = keys;
                    cache.jwks_url = Some(url);
                    cache.fetched_at = Some(Instant::now());
                }
                Err(e) => {
                    JwksFetchFailed {
                        error: &format!("{e:#}"),
                    }
                    .emit(&self.metrics);
                    let mut cache = self.cache.write().await;
                    // Rate-limit failures too; keep the keys we had.
                    cache.fetched_at = Some(Instant::now());
                    if cache.keys.is_empty() {
                        return Err(AuthFailure::JwksUnavailable);
                    }
                }
            }
        }
        let cache = self.cache.read().await;
        Ok(cache
            .keys
            .get(kid)
            .cloned()
            .map_or(Lookup::Unknown, Lookup::Found))
    }

    fn must_fetch(&self, cache: &Cache, kid: &str) -> bool {
        match cache.fetched_at {
            None => true,
            Some(at) => {
                let age = at.elapsed();
                age >= self.config.max_age
                    || (!cache.keys.contains_key(kid) && age >= self.config.min_refetch_interval)
            }
        }
    }

    /// Fetches the JWKS (from `known_url`, else the configured or
    /// discovered URL); returns the URL used and its keys.
    async fn fetch(
        &self,
        known_url: Option<String>,
    ) -> anyhow::Result<(String, HashMap<String, JwksKey>)> {
        let url = match known_url.or_else(|| self.config.jwks_url.clone()) {
            Some(u) => u,
            None => self.discover().await,
        };
        let doc: serde_json::Value = self
            .http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("GET {url}"))?
            .json()
            .await
            .with_context(|| format!("reading the JWKS at {url}"))?;
        if doc.get("keys").and_then(|k| k.as_array()).is_none() {
            bail!("{url} is not a JWKS (no \"keys\" array)");
        }
        let keys = keys_from_jwks(&doc);
        Ok((url, keys))
    }

    /// The `jwks_uri` of the discovery document, else the conventional
    /// `{issuer}/.well-known/jwks.json`.
    async fn discover(&self) -> String {
        let fallback = self.config.issuer_url(".well-known/jwks.json");
        let url = self.config.issuer_url(".well-known/openid-configuration");
        let doc = match self.http.get(&url).send().await {
            Ok(res) if res.status().is_success() => res.json::<serde_json::Value>().await.ok(),
            _ => None,
        };
        let Some(doc) = doc else {
            return fallback;
        };
        let issuer_matches = doc
            .get("issuer")
            .and_then(|i| i.as_str())
            .is_some_and(|i| i.trim_end_matches('/') == self.config.issuer.trim_end_matches('/'));
        match doc.get("jwks_uri").and_then(|u| u.as_str()) {
            Some(u) if issuer_matches => u.to_owned(),
            _ => {
                tracing::warn!(
                    discovery = %url,
                    "the OIDC discovery document names another issuer or no jwks_uri; \
                     using {fallback}"
                );
                fallback
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // A P-256 public point and an RSA modulus (any valid values parse).
    const X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
    const N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

    #[test]
    fn only_rsa_and_p256_signing_keys_are_used() {
        let doc = json!({"keys": [
            {"kty": "RSA", "kid": "r", "n": N, "e": "AQAB"},
            {"kty": "RSA", "kid": "r-alg", "alg": "RS256", "use": "sig", "n": N, "e": "AQAB"},
            {"kty": "EC", "kid": "e", "crv": "P-256", "x": X, "y": Y},
            // Named for another algorithm than its type verifies.
            {"kty": "RSA", "kid": "r-es", "alg": "ES256", "n": N, "e": "AQAB"},
            {"kty": "RSA", "kid": "r-ps", "alg": "PS256", "n": N, "e": "AQAB"},
            // For encryption.
            {"kty": "RSA", "kid": "r-enc", "use": "enc", "n": N, "e": "AQAB"},
            // Symmetric keys never verify anything.
            {"kty": "oct", "kid": "o", "k": "c2VjcmV0"},
            {"kty": "oct", "kid": "o-hs", "alg": "HS256", "k": "c2VjcmV0"},
            // No kid, unknown type, garbage.
            {"kty": "RSA", "n": N, "e": "AQAB"},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": X},
            {"kty": "weird", "kid": "w"},
            42
        ]});
        let keys = keys_from_jwks(&doc);
        let mut kids: Vec<_> = keys.keys().cloned().collect();
        kids.sort();
        assert_eq!(kids, ["e", "r", "r-alg"]);
        assert_eq!(keys["r"].alg, Algorithm::RS256);
        assert_eq!(keys["e"].alg, Algorithm::ES256);
        assert!(keys_from_jwks(&json!({"nokeys": []})).is_empty());
    }

    #[test]
    fn claims_give_scopes_and_default_audience() {
        let c: OidcClaims = serde_json::from_value(json!({
            "sub": "u1", "scp": ["conversations:read", "openid"], "preferred_username": "ana"
        }))
        .unwrap();
        let p = c.principal();
        assert_eq!(p.scopes, vec![crate::auth::Scope::ConversationsRead]);
        assert_eq!(p.agent_id, None);
        assert_eq!(p.source, TokenSource::Oidc);
        let config = OidcConfig::new("https://idp/", None, None);
        assert_eq!(config.audience, DEFAULT_AUDIENCE);
        assert_eq!(
            config.issuer_url(".well-known/jwks.json"),
            "https://idp/.well-known/jwks.json"
        );
        let v = oidc_validation(&config, Algorithm::RS256);
        assert_eq!(v.algorithms, vec![Algorithm::RS256]);
        assert!(v.required_spec_claims.contains("aud"));
    }
}
