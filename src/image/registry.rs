//! A registry client for pulls: endpoints from hosts.toml tried in order, Basic and Bearer token
//! authentication from the request's credentials, manifests and blobs fetched as streams.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use parking_lot::Mutex;
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use reqwest::StatusCode;

use super::error::ImageError;
use super::hosts::Endpoint;
use super::manifest::{sha256_digest, ACCEPT as MANIFEST_ACCEPT};
use super::reference::Reference;

/// Credentials from CRI's `AuthConfig`.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub identity_token: String,
    pub registry_token: String,
}

impl Credentials {
    /// A digest of all of them (username, password, tokens): equal only for equal credentials.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for part in [
            &self.username,
            &self.password,
            &self.identity_token,
            &self.registry_token,
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// From CRI's AuthConfig (`auth` is base64 `user:password`).
    pub fn from_cri(a: &crate::cri::AuthConfig) -> Result<Credentials, String> {
        let mut c = Credentials {
            username: a.username.clone(),
            password: a.password.clone(),
            identity_token: a.identity_token.clone(),
            registry_token: a.registry_token.clone(),
        };
        if !a.auth.is_empty() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.auth.trim())
                .map_err(|e| format!("auth is not base64: {e}"))?;
            let text = String::from_utf8(raw).map_err(|_| "auth is not UTF-8".to_string())?;
            let (u, p) = text
                .split_once(':')
                .ok_or("auth must encode user:password")?;
            c.username = u.to_string();
            c.password = p.to_string();
        }
        Ok(c)
    }
}

/// A fetched manifest document.
pub struct Fetched {
    pub digest: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// Registry clients kept across pulls, by [`client_key`]: building one loads the system's CA
/// roots (milliseconds of CPU), and a kept client keeps its connections to the registry.
static KEPT_CLIENTS: std::sync::LazyLock<Mutex<HashMap<String, reqwest::Client>>> =
    std::sync::LazyLock::new(Default::default);
/// Most clients kept (one per endpoint configuration); beyond it they are all dropped.
const MAX_KEPT_CLIENTS: usize = 64;

/// Everything a client for `ep` is built from; certificate files by path, size and change time,
/// so an edited hosts.toml or a replaced CA file gets a new client.
fn client_key(ep: &Endpoint, timeout: Duration) -> String {
    let stamp = |p: &std::path::Path| {
        let m = std::fs::metadata(p).ok();
        let changed = m.as_ref().and_then(|m| m.modified().ok());
        (p.to_path_buf(), m.map(|m| m.len()), changed)
    };
    let ca: Vec<_> = ep.ca.iter().map(|p| stamp(p)).collect();
    let client: Vec<_> = ep
        .client
        .iter()
        .map(|(c, k)| (stamp(c), k.as_deref().map(stamp)))
        .collect();
    format!(
        "{:?}",
        (&ep.base, ep.skip_verify, ca, client, &ep.headers, timeout)
    )
}

/// Fetches one reference's content from its endpoints.
pub struct Fetcher {
    reference: Reference,
    endpoints: Vec<Endpoint>,
    creds: Credentials,
    clients: Mutex<HashMap<String, reqwest::Client>>,
    auth: Mutex<HashMap<String, String>>,
    timeout: Duration,
}

impl Fetcher {
    pub fn new(
        reference: Reference,
        endpoints: Vec<Endpoint>,
        creds: Credentials,
        timeout: Duration,
    ) -> Fetcher {
        Fetcher {
            reference,
            endpoints,
            creds,
            clients: Mutex::new(HashMap::new()),
            auth: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    fn name(&self) -> String {
        self.reference.to_string()
    }

    /// Reads a document's body (manifest, index, config) of at most `limit` bytes, refused as
    /// soon as it says or shows more, and within the pull's progress timeout as a whole: neither
    /// a huge nor a dripping body holds memory or a worker.
    pub async fn read_body(
        &self,
        resp: reqwest::Response,
        limit: usize,
        what: &str,
        step: &'static str,
        host: &str,
    ) -> Result<Vec<u8>, ImageError> {
        match read_limited(resp, limit, self.timeout).await {
            Ok(b) => Ok(b),
            Err(BodyError::TooLarge(n)) => Err(ImageError::BadDocument {
                reference: self.name(),
                what: what.into(),
                reason: format!("{n} bytes is larger than the {} limit", human(limit)),
            }),
            Err(BodyError::Stalled) => Err(self.stalled(step)),
            Err(BodyError::Transport(e)) => Err(ImageError::Unavailable {
                reference: self.name(),
                step,
                host: host.to_string(),
                detail: error_chain(&e),
            }),
        }
    }

    fn stalled(&self, step: &str) -> ImageError {
        ImageError::Stalled {
            reference: self.name(),
            step: step.into(),
            after: self.timeout,
        }
    }

    /// Resolves the reference (tag or digest) to its top manifest or index.
    pub async fn resolve(&self) -> Result<Fetched, ImageError> {
        let object = self.reference.object().to_string();
        let step = "resolving the manifest";
        let mut last = None;
        for ep in self
            .endpoints
            .iter()
            .filter(|e| e.resolve || (e.pull && self.reference.digest.is_some()))
        {
            match self.get_document(ep, &object, step).await {
                Ok(f) => {
                    if let Some(want) = &self.reference.digest {
                        if &f.digest != want {
                            return Err(ImageError::DigestMismatch {
                                reference: self.name(),
                                what: "manifest".into(),
                                expected: want.clone(),
                                got: f.digest,
                            });
                        }
                    }
                    return Ok(f);
                }
                Err(e) => {
                    tracing::debug!(endpoint = %ep.base, error = %e, "endpoint failed; trying the next");
                    last = Self::keep_best(last, e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ImageError::Unavailable {
            reference: self.name(),
            step,
            host: self.reference.domain.clone(),
            detail: "no endpoint may resolve this reference (check capabilities in hosts.toml)"
                .into(),
        }))
    }

    /// Of the failures of several endpoints, the one that says most: a registry's answer (not
    /// found, refused credentials, bad data) over a failure to reach another endpoint.
    fn keep_best(best: Option<ImageError>, next: ImageError) -> Option<ImageError> {
        let unreachable = |e: &ImageError| {
            matches!(
                e,
                ImageError::Unavailable { .. } | ImageError::Stalled { .. }
            )
        };
        match best {
            Some(b) if !unreachable(&b) && unreachable(&next) => Some(b),
            _ => Some(next),
        }
    }

    /// Fetches a manifest by digest and verifies it.
    pub async fn manifest(&self, digest: &str) -> Result<Fetched, ImageError> {
        let step = "fetching the platform manifest";
        let mut last = None;
        for ep in self.endpoints.iter().filter(|e| e.pull) {
            match self.get_document(ep, digest, step).await {
                Ok(f) if f.digest == digest => return Ok(f),
                Ok(f) => {
                    return Err(ImageError::DigestMismatch {
                        reference: self.name(),
                        what: format!("manifest {digest}"),
                        expected: digest.into(),
                        got: f.digest,
                    })
                }
                Err(e) => last = Self::keep_best(last, e),
            }
        }
        Err(last.unwrap_or_else(|| self.no_pull_endpoint(step)))
    }

    /// Opens a blob for streaming (the caller verifies the digest while reading).
    pub async fn blob(
        &self,
        digest: &str,
        step: &'static str,
    ) -> Result<reqwest::Response, ImageError> {
        let mut last = None;
        for ep in self.endpoints.iter().filter(|e| e.pull) {
            let url = self.url(ep, "blobs", digest);
            match self.send(ep, &url, "*/*", step).await {
                Ok(r) => return Ok(r),
                Err(e) => last = Self::keep_best(last, e),
            }
        }
        Err(last.unwrap_or_else(|| self.no_pull_endpoint(step)))
    }

    fn no_pull_endpoint(&self, step: &'static str) -> ImageError {
        ImageError::Unavailable {
            reference: self.name(),
            step,
            host: self.reference.domain.clone(),
            detail: "no endpoint may pull (check capabilities in hosts.toml)".into(),
        }
    }

    async fn get_document(
        &self,
        ep: &Endpoint,
        object: &str,
        step: &'static str,
    ) -> Result<Fetched, ImageError> {
        let url = self.url(ep, "manifests", object);
        let resp = self.send(ep, &url, MANIFEST_ACCEPT, step).await?;
        let media_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let host = host_of(&ep.base);
        let bytes = self
            .read_body(resp, MAX_MANIFEST, "manifest", step, &host)
            .await?;
        Ok(Fetched {
            digest: sha256_digest(&bytes),
            media_type,
            bytes: bytes.to_vec(),
        })
    }

    fn url(&self, ep: &Endpoint, kind: &str, object: &str) -> String {
        let mut url = format!("{}/{}/{kind}/{object}", ep.base, self.reference.path);
        if ep.mirror {
            url.push_str(&format!("?ns={}", self.reference.domain));
        }
        url
    }

    fn client(&self, ep: &Endpoint) -> Result<reqwest::Client, String> {
        let key = ep.base.clone();
        if let Some(c) = self.clients.lock().get(&key) {
            return Ok(c.clone());
        }
        let kept = client_key(ep, self.timeout);
        let kept_client = KEPT_CLIENTS.lock().get(&kept).cloned();
        let c = match kept_client {
            Some(c) => c,
            None => {
                let c = self.build_client(ep)?;
                let mut all = KEPT_CLIENTS.lock();
                if all.len() >= MAX_KEPT_CLIENTS {
                    all.clear();
                }
                all.insert(kept, c.clone());
                c
            }
        };
        self.clients.lock().insert(key, c.clone());
        Ok(c)
    }

    /// A new client for `ep`: its TLS settings (the system's roots, its CA and client
    /// certificates), headers and timeouts.
    fn build_client(&self, ep: &Endpoint) -> Result<reqwest::Client, String> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Stalls are detected per chunk by the caller (a clearer error); this is the backstop.
            .read_timeout(self.timeout * 2)
            .user_agent(concat!("concord/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(ep.skip_verify);
        for ca in &ep.ca {
            let pem = std::fs::read(ca).map_err(|e| format!("CA {}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("CA {}: {e}", ca.display()))?;
            b = b.add_root_certificate(cert);
        }
        if let Some((cert, key)) = ep.client.first() {
            let mut pem =
                std::fs::read(cert).map_err(|e| format!("client cert {}: {e}", cert.display()))?;
            if let Some(k) = key {
                pem.extend(
                    std::fs::read(k).map_err(|e| format!("client key {}: {e}", k.display()))?,
                );
            }
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| format!("client cert {}: {e}", cert.display()))?;
            b = b.identity(id);
        }
        let mut headers = HeaderMap::new();
        for (k, v) in &ep.headers {
            if let (Ok(k), Ok(v)) = (
                k.parse::<reqwest::header::HeaderName>(),
                HeaderValue::from_str(v),
            ) {
                headers.insert(k, v);
            }
        }
        b.default_headers(headers)
            .build()
            .map_err(|e| e.to_string())
    }

    /// GET with authentication: on 401 the challenge is answered once.
    async fn send(
        &self,
        ep: &Endpoint,
        url: &str,
        accept: &str,
        step: &'static str,
    ) -> Result<reqwest::Response, ImageError> {
        let host = host_of(&ep.base);
        let unavailable = |detail: String| ImageError::Unavailable {
            reference: self.name(),
            step,
            host: host.clone(),
            detail,
        };
        let client = self.client(ep).map_err(unavailable)?;
        let mut answered = false;
        loop {
            let mut req = client.get(url).header(ACCEPT, accept);
            if let Some(a) = self.auth.lock().get(&ep.base) {
                req = req.header(AUTHORIZATION, a.as_str());
            }
            let resp = tokio::time::timeout(self.timeout, req.send())
                .await
                .map_err(|_| self.stalled(step))?
                .map_err(|e| unavailable(error_chain(&e)))?;
            match resp.status() {
                s if s.is_success() => return Ok(resp),
                StatusCode::UNAUTHORIZED if !answered => {
                    answered = true;
                    let challenge = resp
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let header = self.authorize(&client, &challenge, &host, step).await?;
                    self.auth.lock().insert(ep.base.clone(), header);
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    let detail =
                        if self.creds.username.is_empty() && self.creds.registry_token.is_empty() {
                            "the registry needs credentials and none were given".to_string()
                        } else {
                            format!("HTTP {}", resp.status())
                        };
                    return Err(self.unauthenticated(step, &host, detail));
                }
                StatusCode::NOT_FOUND => {
                    return Err(ImageError::NotFound {
                        reference: self.name(),
                        step,
                        host,
                    })
                }
                s => return Err(unavailable(format!("HTTP {s}"))),
            }
        }
    }

    /// Answers a `WWW-Authenticate` challenge with an Authorization header value.
    async fn authorize(
        &self,
        client: &reqwest::Client,
        challenge: &str,
        host: &str,
        step: &'static str,
    ) -> Result<String, ImageError> {
        if !self.creds.registry_token.is_empty() {
            return Ok(format!("Bearer {}", self.creds.registry_token));
        }
        let (scheme, params) = parse_challenge(challenge);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                if self.creds.username.is_empty() {
                    return Err(self.unauthenticated(
                        step,
                        host,
                        "the registry needs credentials and none were given".into(),
                    ));
                }
                let raw = format!("{}:{}", self.creds.username, self.creds.password);
                Ok(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                ))
            }
            "bearer" => {
                let token = self.bearer_token(client, &params, host, step).await?;
                Ok(format!("Bearer {token}"))
            }
            _ => Err(self.unauthenticated(
                step,
                host,
                format!("unsupported authentication challenge {challenge:?}"),
            )),
        }
    }

    /// Fetches a token from the realm a Bearer challenge names, for its scope and service.
    async fn bearer_token(
        &self,
        client: &reqwest::Client,
        params: &HashMap<String, String>,
        host: &str,
        step: &'static str,
    ) -> Result<String, ImageError> {
        let unauth = |detail: String| self.unauthenticated(step, host, detail);
        let realm = params
            .get("realm")
            .ok_or_else(|| unauth("bearer challenge without realm".into()))?;
        let scope = params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", self.reference.path));
        let mut query: Vec<(&str, String)> = vec![("scope", scope)];
        if let Some(s) = params.get("service") {
            query.push(("service", s.clone()));
        }
        let resp = self
            .request_token(client, realm, &query)
            .await
            .map_err(|e| ImageError::Unavailable {
                reference: self.name(),
                step: "fetching a registry token",
                host: host.to_string(),
                detail: error_chain(&e),
            })?;
        if !resp.status().is_success() {
            return Err(unauth(format!(
                "token server answered HTTP {}",
                resp.status()
            )));
        }
        let raw = match read_limited(resp, MAX_TOKEN, self.timeout).await {
            Ok(b) => b,
            Err(BodyError::TooLarge(n)) => {
                return Err(unauth(format!(
                    "token response: {n} bytes is larger than the {} limit",
                    human(MAX_TOKEN)
                )))
            }
            Err(BodyError::Stalled) => {
                return Err(unauth(format!(
                    "token response: no complete answer within {:?}",
                    self.timeout
                )))
            }
            Err(BodyError::Transport(e)) => return Err(unauth(format!("token response: {e}"))),
        };
        let body: serde_json::Value =
            serde_json::from_slice(&raw).map_err(|e| unauth(format!("token response: {e}")))?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| unauth("token response has no token".into()))
    }

    /// Asks the token server: with the identity token (an OAuth2 refresh) when there is one,
    /// else a GET with the username and password, if any.
    async fn request_token(
        &self,
        client: &reqwest::Client,
        realm: &str,
        query: &[(&str, String)],
    ) -> Result<reqwest::Response, reqwest::Error> {
        if !self.creds.identity_token.is_empty() {
            let mut form = query.to_vec();
            form.push(("grant_type", "refresh_token".into()));
            form.push(("refresh_token", self.creds.identity_token.clone()));
            form.push(("client_id", "concord".into()));
            let body = form
                .iter()
                .map(|(k, v)| format!("{k}={}", urlencode(v)))
                .collect::<Vec<_>>()
                .join("&");
            client
                .post(realm)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
        } else {
            let mut req = client.get(realm).query(query);
            if !self.creds.username.is_empty() {
                req = req.basic_auth(&self.creds.username, Some(&self.creds.password));
            }
            req.send().await
        }
    }

    fn unauthenticated(&self, step: &'static str, host: &str, detail: String) -> ImageError {
        ImageError::Unauthenticated {
            reference: self.name(),
            step,
            host: host.to_string(),
            detail,
        }
    }
}

/// `Bearer realm="...",service="...",scope="..."` → ("Bearer", params). Public for fuzz/.
pub fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (v, remain) = if let Some(stripped) = after.strip_prefix('"') {
            match stripped.find('"') {
                Some(end) => (stripped[..end].to_string(), &stripped[end + 1..]),
                None => (stripped.to_string(), ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (after[..end].trim().to_string(), &after[end..]),
                None => (after.trim().to_string(), ""),
            }
        };
        params.insert(k, v);
        rest = remain.trim_start_matches(',').trim();
    }
    (scheme.to_string(), params)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn host_of(base: &str) -> String {
    base.split("://")
        .nth(1)
        .unwrap_or(base)
        .split('/')
        .next()
        .unwrap_or(base)
        .to_string()
}

/// An error with its sources ("connection refused", "dns error", ...).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/busybox:pull");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(s, "Basic");
        assert_eq!(p["realm"], "Registry Realm");
    }

    #[test]
    fn cri_auth_field_decodes_to_user_and_password() {
        let a = crate::cri::AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode("alice:s3cret"),
            ..Default::default()
        };
        let c = Credentials::from_cri(&a).unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice", "s3cret")
        );
        let bad = crate::cri::AuthConfig {
            auth: "!!".into(),
            ..Default::default()
        };
        assert!(Credentials::from_cri(&bad).is_err());
    }
}

/// Largest manifest or index read (containerd's limit).
pub const MAX_MANIFEST: usize = 4 << 20;
/// Largest image config read.
pub const MAX_CONFIG: usize = 16 << 20;
/// Largest token server answer read.
pub const MAX_TOKEN: usize = 1 << 20;

/// Why a bounded body read failed.
#[derive(Debug)]
pub enum BodyError {
    /// The body is (or says it is) this many bytes, over the limit.
    TooLarge(u64),
    /// It did not arrive whole in time.
    Stalled,
    Transport(reqwest::Error),
}

/// Reads `resp`'s body: at most `limit` bytes (a larger Content-Length is refused before
/// reading), the whole within `within`.
pub async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
    within: Duration,
) -> Result<Vec<u8>, BodyError> {
    if let Some(n) = resp.content_length().filter(|n| *n > limit as u64) {
        return Err(BodyError::TooLarge(n));
    }
    let read = async {
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(BodyError::Transport)? {
            if body.len() + chunk.len() > limit {
                return Err(BodyError::TooLarge((body.len() + chunk.len()) as u64));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    tokio::time::timeout(within, read)
        .await
        .map_err(|_| BodyError::Stalled)?
}

/// `4 MiB`, `1 KiB`, `17 bytes`.
fn human(n: usize) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}
