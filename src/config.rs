//! The TOML configuration model, its environment overrides, and validation at start-up.
//!
//! Everything the request path needs is resolved here once (API keys read from the environment,
//! key hashes decoded, aliases indexed), so no handler reads files or environment variables.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Environment variables that override the file. Documented in `config.toml` and the README.
pub const ENV_CONFIG: &str = "VISA_CONFIG";
pub const ENV_LISTEN: &str = "VISA_LISTEN";
pub const ENV_ADMIN_KEY: &str = "VISA_ADMIN_KEY";
pub const ENV_PROFILES_DB: &str = "VISA_PROFILES_DB";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    #[serde(default)]
    pub profiles: ProfilesConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub decisions: DecisionsConfig,
    #[serde(default)]
    pub models: ModelsConfig,
    #[serde(default)]
    pub llm: LlmConfig,
    #[serde(default)]
    pub rewriter: RewriterConfig,
    #[serde(default)]
    pub enforce: EnforceConfig,
    /// Filled from `VISA_ADMIN_KEY`, never from the file.
    #[serde(skip)]
    pub admin_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    /// Largest request body accepted, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Requests handled at once across all tenants; more are shed with 429.
    pub max_concurrent_requests: usize,
    /// How long in-flight requests may run after SIGTERM/SIGINT, and then background work may
    /// drain, before the process exits.
    pub shutdown_grace_ms: u64,
    /// TCP connect timeout of the one pooled upstream HTTP client.
    pub upstream_connect_timeout_ms: u64,
    /// Idle connections kept per upstream host.
    pub upstream_pool_max_idle_per_host: usize,
    /// Folder served at `/static` (the web console).
    pub static_dir: String,
    /// Threads of the HTTP runtime; 0 = one per CPU.
    pub worker_threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 4 * 1024 * 1024,
            max_concurrent_requests: 1024,
            shutdown_grace_ms: 30_000,
            upstream_connect_timeout_ms: 5_000,
            upstream_pool_max_idle_per_host: 256,
            static_dir: "static".into(),
            worker_threads: 0,
        }
    }
}

pub use visa_core::config::{
    DropRule, EnforceConfig, RewriteMode, RewriterBackend, RewriterConfig,
};
pub use visa_models::config::{ConfigError, LlmConfig, ModelsConfig, config_err};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfilesConfig {
    /// Where profiles live: one SQLite file, or a PostgreSQL database several replicas share.
    pub backend: StoreBackend,
    /// SQLite file holding every tenant's profile and its history (created when missing).
    pub database: String,
    /// PostgreSQL connection string (`host=.. user=.. dbname=..` or `postgresql://..`), for
    /// `backend = "postgres"`. Prefer `url_env`, so a password stays out of the file.
    pub url: Option<String>,
    /// The environment variable holding the PostgreSQL connection string.
    pub url_env: Option<String>,
    /// Largest number of versions `GET .../profile/history` returns.
    pub history_limit: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    #[default]
    Sqlite,
    Postgres,
}

impl Default for ProfilesConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Sqlite,
            database: "data/profiles.sqlite".into(),
            url: None,
            url_env: None,
            history_limit: 100,
        }
    }
}

/// A connection string from `<section>.url_env` (when set) or `<section>.url`.
fn url_from(
    section: &str,
    backend: &str,
    url: &Option<String>,
    url_env: &Option<String>,
) -> Result<String, ConfigError> {
    if let Some(var) = url_env {
        return std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                config_err(
                    format!("{section}.url_env"),
                    format!("the environment variable {var} is not set"),
                )
            });
    }
    url.clone().filter(|u| !u.trim().is_empty()).ok_or_else(|| {
        config_err(
            format!("{section}.url"),
            format!("backend = \"{backend}\" needs url or url_env"),
        )
    })
}

impl ProfilesConfig {
    /// The PostgreSQL connection string, from `url_env` (when set) or `url`.
    pub fn postgres_url(&self) -> Result<String, ConfigError> {
        url_from("profiles", "postgres", &self.url, &self.url_env)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionsConfig {
    /// Record enforcement decisions (as each profile's `log_decisions` and `log_text` say).
    pub enabled: bool,
    /// Decisions waiting to be written; more are dropped and counted, never waited for.
    pub queue: usize,
    /// Records older than this many days are deleted (0: kept forever).
    pub retention_days: u64,
    /// Most records one `GET /v1/decisions` page holds.
    pub max_page: usize,
}

impl Default for DecisionsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            queue: 1024,
            retention_days: 30,
            max_page: 200,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Where tenant limits are counted: on each replica, or shared through Redis.
    pub backend: LimitsBackend,
    /// Redis URL (`redis://host:port/db`), for `backend = "redis"`; or `url_env`.
    pub url: Option<String>,
    /// The environment variable holding the Redis URL.
    pub url_env: Option<String>,
    /// Prefix of every key the proxy writes (replicas of one deployment share it).
    pub key_prefix: String,
    /// How long a concurrency lease lives when its replica dies before giving it back.
    pub lease_seconds: u64,
    /// How long one admission waits for Redis before using the replica's own limits.
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitsBackend {
    #[default]
    Local,
    Redis,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            backend: LimitsBackend::Local,
            url: None,
            url_env: None,
            key_prefix: "visa".into(),
            lease_seconds: 600,
            timeout_ms: 100,
        }
    }
}

impl LimitsConfig {
    pub fn redis_url(&self) -> Result<String, ConfigError> {
        url_from("limits", "redis", &self.url, &self.url_env)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.backend == LimitsBackend::Redis {
            self.redis_url()?;
        }
        if self.lease_seconds == 0 {
            return Err(config_err("limits.lease_seconds", "must be above 0"));
        }
        if self.timeout_ms == 0 {
            return Err(config_err("limits.timeout_ms", "must be above 0"));
        }
        if self.key_prefix.is_empty() {
            return Err(config_err("limits.key_prefix", "must not be empty"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `visa_proxy=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    /// `openai`: an OpenAI-compatible HTTP API at `base_url`; `local`: the proxy's own
    /// language model (the `[llm]` section).
    #[serde(default)]
    pub kind: UpstreamKind,
    /// Base URL up to and including the API version, e.g. `https://api.openai.com/v1`.
    #[serde(default)]
    pub base_url: String,
    /// Name of the environment variable that holds the upstream's API key (read once at start).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Whole exchange, streamed bodies included.
    #[serde(default = "default_total_timeout_ms")]
    pub total_timeout_ms: u64,
    /// For streams: from sending the request to the first event.
    #[serde(default = "default_first_byte_timeout_ms")]
    pub first_byte_timeout_ms: u64,
    /// For streams: longest silence between two events once the stream runs.
    #[serde(default = "default_stream_idle_timeout_ms")]
    pub stream_idle_timeout_ms: u64,
    /// Retries on connect errors and 429/502/503/504, only before anything reached the client.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    #[serde(default = "default_retry_backoff_max_ms")]
    pub retry_backoff_max_ms: u64,
    /// Tenant-facing model alias -> model name sent to this upstream.
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    /// Also list the upstream's own `/models` in `GET /v1/models`.
    #[serde(default = "default_true")]
    pub list_models: bool,
    /// `/readyz` does not probe this upstream when true.
    #[serde(default)]
    pub skip_readiness_check: bool,
    /// Largest JSON answer (and model list) read from this upstream, in bytes; a larger one is
    /// a 502.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
}

fn default_max_response_bytes() -> usize {
    16 * 1024 * 1024
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    #[default]
    Openai,
    Local,
}

fn default_total_timeout_ms() -> u64 {
    600_000
}
fn default_first_byte_timeout_ms() -> u64 {
    60_000
}
fn default_stream_idle_timeout_ms() -> u64 {
    120_000
}
fn default_max_retries() -> u32 {
    2
}
fn default_retry_backoff_ms() -> u64 {
    100
}
fn default_retry_backoff_max_ms() -> u64 {
    2_000
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    /// Hex SHA-256 digests of the tenant's API keys (`visa-proxy hash-key KEY` prints one).
    #[serde(default)]
    pub api_key_sha256: Vec<String>,
    /// Also (or instead) the key in this environment variable, read once at start; unset or
    /// empty: no key from it (the Docker image's demo tenant takes its key this way, so an
    /// image never accepts a published key).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The hash of `api_key_env`'s key, filled at start.
    #[serde(skip)]
    pub env_key_hash: Option<[u8; 32]>,
    /// Upstreams this tenant may use; the first one answers models that no alias names.
    pub upstreams: Vec<String>,
    #[serde(default)]
    pub limits: TenantLimits,
    /// The tenant may read and replace its own profile with its API key (`/v1/profile`).
    #[serde(default)]
    pub self_manage_profile: bool,
}

/// A tenant's limits (null: unlimited); also what `GET /v1/tenants` shows of them.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    /// Requests in flight at once (None: unlimited).
    pub max_concurrent: Option<u32>,
    /// Requests per minute, enforced as a token bucket with a burst of one minute's worth.
    pub requests_per_minute: Option<u32>,
}

impl UpstreamConfig {
    pub fn total_timeout(&self) -> Duration {
        Duration::from_millis(self.total_timeout_ms)
    }
    pub fn first_byte_timeout(&self) -> Duration {
        Duration::from_millis(self.first_byte_timeout_ms)
    }
    pub fn stream_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.stream_idle_timeout_ms)
    }
}

impl Config {
    /// Parse TOML text; errors name the offending key (toml reports the path and line).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let field = e
                .span()
                .map(|s| {
                    let before = &text[..s.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    format!("line {line}")
                })
                .unwrap_or_else(|| "config".into());
            config_err(field, e.message().trim().to_string())
        })
    }

    /// Read the file, apply environment overrides, validate.
    pub fn load(path: &Path, listen_override: Option<String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| config_err(path.display().to_string(), format!("cannot read: {e}")))?;
        let mut config = Self::from_toml(&text)?;
        config.apply_env(listen_override);
        config.validate()?;
        Ok(config)
    }

    /// `--listen` beats `VISA_LISTEN`, which beats the file; the admin key only comes from env.
    pub fn apply_env(&mut self, listen_override: Option<String>) {
        if let Some(listen) = listen_override {
            self.server.listen = listen;
        } else if let Ok(listen) = std::env::var(ENV_LISTEN) {
            self.server.listen = listen;
        }
        self.admin_key = std::env::var(ENV_ADMIN_KEY).ok().filter(|k| !k.is_empty());
        for t in &mut self.tenants {
            t.env_key_hash = t
                .api_key_env
                .as_deref()
                .and_then(|v| std::env::var(v).ok())
                .filter(|k| !k.is_empty())
                .map(|k| hash_key(&k));
        }
        if let Ok(db) = std::env::var(ENV_PROFILES_DB)
            && !db.is_empty()
        {
            self.profiles.database = db;
        }
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.listen.parse().map_err(|e| {
            config_err(
                "server.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:8080: {e}",
                    self.server.listen
                ),
            )
        })
    }

    /// Every section, in this order; the first problem is reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_server()?;
        self.validate_profile_store()?;
        self.models.validate()?;
        self.limits.validate()?;
        self.validate_decisions()?;
        self.llm.validate()?;
        self.rewriter.validate()?;
        self.enforce.validate()?;
        self.validate_remote_rewriter()?;
        if self.profiles.history_limit == 0 {
            return Err(config_err("profiles.history_limit", "must be above 0"));
        }
        let names = self.validate_upstreams()?;
        self.validate_tenants(&names)
    }

    fn validate_server(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        if self.server.max_body_bytes == 0 {
            return Err(config_err("server.max_body_bytes", "must be above 0"));
        }
        if self.server.max_concurrent_requests == 0 {
            return Err(config_err(
                "server.max_concurrent_requests",
                "must be above 0",
            ));
        }
        Ok(())
    }

    fn validate_profile_store(&self) -> Result<(), ConfigError> {
        match self.profiles.backend {
            StoreBackend::Sqlite if self.profiles.database.trim().is_empty() => {
                return Err(config_err("profiles.database", "must name a file"));
            }
            StoreBackend::Sqlite => {}
            StoreBackend::Postgres => {
                self.profiles.postgres_url()?;
            }
        }
        Ok(())
    }

    fn validate_decisions(&self) -> Result<(), ConfigError> {
        if self.decisions.queue == 0 {
            return Err(config_err("decisions.queue", "must be above 0"));
        }
        if self.decisions.max_page == 0 {
            return Err(config_err("decisions.max_page", "must be above 0"));
        }
        Ok(())
    }

    /// A remote rewriter names an openai-kind upstream.
    fn validate_remote_rewriter(&self) -> Result<(), ConfigError> {
        if let RewriterBackend::Remote = self.rewriter.backend {
            match self
                .upstreams
                .iter()
                .find(|u| Some(&u.name) == self.rewriter.upstream.as_ref())
            {
                Some(u) if u.kind == UpstreamKind::Openai => {}
                Some(_) => {
                    return Err(config_err(
                        "rewriter.upstream",
                        "a remote rewriter names an openai-kind upstream",
                    ));
                }
                None => {
                    return Err(config_err(
                        "rewriter.upstream",
                        "a remote rewriter names one of the [[upstreams]]",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The upstreams; their names.
    fn validate_upstreams(&self) -> Result<HashSet<&str>, ConfigError> {
        if self.upstreams.is_empty() {
            return Err(config_err(
                "upstreams",
                "at least one [[upstreams]] entry is needed",
            ));
        }
        let mut names = HashSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            let at = |f: &str| format!("upstreams[{i}].{f}");
            if u.name.trim().is_empty() {
                return Err(config_err(at("name"), "must not be empty"));
            }
            if !names.insert(u.name.as_str()) {
                return Err(config_err(
                    at("name"),
                    format!("duplicate upstream {:?}", u.name),
                ));
            }
            match u.kind {
                UpstreamKind::Openai => {
                    let url = reqwest::Url::parse(&u.base_url).map_err(|e| {
                        config_err(at("base_url"), format!("{:?}: {e}", u.base_url))
                    })?;
                    if !matches!(url.scheme(), "http" | "https") {
                        return Err(config_err(at("base_url"), "must be an http or https URL"));
                    }
                }
                UpstreamKind::Local => {
                    if !self.llm.enabled {
                        return Err(config_err(
                            at("kind"),
                            "a local upstream needs the local model ([llm] enabled = true)",
                        ));
                    }
                }
            }
            for (f, v) in [
                ("total_timeout_ms", u.total_timeout_ms),
                ("first_byte_timeout_ms", u.first_byte_timeout_ms),
                ("stream_idle_timeout_ms", u.stream_idle_timeout_ms),
            ] {
                if v == 0 {
                    return Err(config_err(at(f), "must be above 0"));
                }
            }
            if let Some(var) = &u.api_key_env {
                match std::env::var(var) {
                    Ok(v) if !v.is_empty() => {}
                    _ => {
                        return Err(config_err(
                            at("api_key_env"),
                            format!("environment variable {var} is not set"),
                        ));
                    }
                }
            }
            for (alias, model) in &u.models {
                if alias.is_empty() || model.is_empty() {
                    return Err(config_err(
                        at("models"),
                        "aliases and model names must not be empty",
                    ));
                }
            }
        }
        Ok(names)
    }

    /// The tenants, whose upstreams must be among `names`.
    fn validate_tenants(&self, names: &HashSet<&str>) -> Result<(), ConfigError> {
        let mut tenant_ids = HashSet::new();
        let mut key_hashes = HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let at = |f: &str| format!("tenants[{i}].{f}");
            if t.id.trim().is_empty() {
                return Err(config_err(at("id"), "must not be empty"));
            }
            if !tenant_ids.insert(t.id.as_str()) {
                return Err(config_err(at("id"), format!("duplicate tenant {:?}", t.id)));
            }
            if t.api_key_sha256.is_empty() && t.api_key_env.is_none() {
                return Err(config_err(
                    at("api_key_sha256"),
                    "at least one key hash (or api_key_env) is needed",
                ));
            }
            if let Some(h) = t.env_key_hash {
                if self.admin_key.as_deref().map(hash_key) == Some(h) {
                    return Err(config_err(
                        at("api_key_env"),
                        format!(
                            "{ENV_ADMIN_KEY} is this tenant's key: an admin key must be a key of its own"
                        ),
                    ));
                }
                if !key_hashes.insert(h) {
                    return Err(config_err(at("api_key_env"), "this key is already used"));
                }
            }
            for (k, h) in t.api_key_sha256.iter().enumerate() {
                let field = format!("tenants[{i}].api_key_sha256[{k}]");
                let bytes = decode_sha256(h).map_err(|m| config_err(&field, m))?;
                if self.admin_key.as_deref().map(hash_key) == Some(bytes) {
                    return Err(config_err(
                        field,
                        format!(
                            "{ENV_ADMIN_KEY} is this tenant's key: an admin key must be a key of its own"
                        ),
                    ));
                }
                if !key_hashes.insert(bytes) {
                    return Err(config_err(field, "this key hash is already used"));
                }
            }
            if t.upstreams.is_empty() {
                return Err(config_err(at("upstreams"), "name at least one upstream"));
            }
            for (k, name) in t.upstreams.iter().enumerate() {
                if !names.contains(name.as_str()) {
                    return Err(config_err(
                        format!("tenants[{i}].upstreams[{k}]"),
                        format!("unknown upstream {name:?}"),
                    ));
                }
            }
            if t.limits.max_concurrent == Some(0) {
                return Err(config_err(
                    at("limits.max_concurrent"),
                    "must be above 0 (omit for no limit)",
                ));
            }
            if t.limits.requests_per_minute == Some(0) {
                return Err(config_err(
                    at("limits.requests_per_minute"),
                    "must be above 0 (omit for no limit)",
                ));
            }
        }
        Ok(())
    }
}

/// Decode a hex SHA-256 digest (64 hex characters).
pub fn decode_sha256(hex_digest: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digest.trim(), &mut out)
        .map_err(|e| format!("not a 64-character hex SHA-256 digest: {e}"))?;
    Ok(out)
}

/// SHA-256 of an API key, as stored in `api_key_sha256`.
pub fn hash_key(key: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[upstreams]]
name = "mock"
base_url = "http://127.0.0.1:9/v1"

[[tenants]]
id = "t1"
api_key_sha256 = ["2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"]
upstreams = ["mock"]
"#;

    #[test]
    fn minimal_config_is_valid_with_defaults() {
        let c = Config::from_toml(MINIMAL).unwrap();
        c.validate().unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(c.upstreams[0].max_retries, 2);
        assert_eq!(hex::encode(hash_key("foo")), c.tenants[0].api_key_sha256[0]);
    }

    #[test]
    fn unknown_field_is_named() {
        let text = MINIMAL.replace("base_url", "base_ur");
        let e = Config::from_toml(&text).unwrap_err();
        assert!(e.to_string().contains("base_ur"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let text = MINIMAL.replace("upstreams = [\"mock\"]", "upstreams = [\"nope\"]");
        let e = Config::from_toml(&text).unwrap().validate().unwrap_err();
        assert_eq!(e.field, "tenants[0].upstreams[0]");

        let text = MINIMAL.replace("2c26", "zz26");
        let e = Config::from_toml(&text).unwrap().validate().unwrap_err();
        assert_eq!(e.field, "tenants[0].api_key_sha256[0]");

        let text = MINIMAL.replace("http://127.0.0.1:9/v1", "ftp://x");
        let e = Config::from_toml(&text).unwrap().validate().unwrap_err();
        assert_eq!(e.field, "upstreams[0].base_url");

        let text = format!("{MINIMAL}\n[tenants.limits]\nmax_concurrent = 0\n");
        let e = Config::from_toml(&text).unwrap().validate().unwrap_err();
        assert_eq!(e.field, "tenants[0].limits.max_concurrent");
    }

    #[test]
    fn missing_api_key_env_is_an_error() {
        let text = MINIMAL.replace(
            "base_url = \"http://127.0.0.1:9/v1\"",
            "base_url = \"http://127.0.0.1:9/v1\"\napi_key_env = \"VISA_TEST_SURELY_UNSET_VAR\"",
        );
        let e = Config::from_toml(&text).unwrap().validate().unwrap_err();
        assert_eq!(e.field, "upstreams[0].api_key_env");
    }
}
