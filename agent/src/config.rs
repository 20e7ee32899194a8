//! The agent's settings: command-line flags, or a TOML file with the same names.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Default Workload API socket.
pub const SOCKET_DEFAULT: &str = "/run/authsec/agent.sock";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub trust_domain: String,
    /// Node gRPC addresses (`host:port`); the agent uses any of them and fails over.
    pub servers: Vec<String>,
    /// Where the agent keeps its key and SVID (0700), so a restart needs no new token.
    pub data_dir: PathBuf,
    /// The Workload API socket.
    #[serde(default = "socket_default")]
    pub socket_path: PathBuf,
    /// `sha256:<hex>` of the cluster's root CA (`authsec node init` printed it): how the
    /// agent authenticates the node it first attests to, before it holds the bundle.
    #[serde(default)]
    pub ca_pin: Option<String>,
    /// A file holding the single-use join token (preferred over `join_token`: no secret on a
    /// command line).
    #[serde(default)]
    pub join_token_file: Option<PathBuf>,
    #[serde(default)]
    pub join_token: Option<Secret>,
    /// How often the agent re-reads its entries when the sync stream is down, and the bound
    /// on its reconnect backoff, in milliseconds.
    #[serde(default = "backoff_max_ms")]
    pub backoff_max_ms: u64,
}

fn socket_default() -> PathBuf {
    PathBuf::from(SOCKET_DEFAULT)
}

fn backoff_max_ms() -> u64 {
    5_000
}

impl AgentConfig {
    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.backoff_max_ms.max(100))
    }

    /// The join token, from the file or the setting.
    pub fn join_token(&self) -> anyhow::Result<Option<Secret>> {
        if let Some(f) = &self.join_token_file {
            let t = std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("reading join_token_file {}: {e}", f.display()))?;
            return Ok(Some(Secret(t.trim().to_owned())));
        }
        Ok(self.join_token.clone())
    }
}

/// A secret string: never in `Debug` output or logs.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let c: AgentConfig = toml::from_str(
            r#"trust_domain = "td"
servers = ["127.0.0.1:1"]
data_dir = "/tmp/x"
join_token = "host1.0123456789abcdef"
"#,
        )
        .expect("parse");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("0123456789abcdef"), "{dbg}");
        assert_eq!(c.socket_path, PathBuf::from(SOCKET_DEFAULT));
    }

    #[test]
    fn unknown_settings_are_refused() {
        let e = toml::from_str::<AgentConfig>(
            "trust_domain = \"td\"\nservers = []\ndata_dir = \"/x\"\nsokcet_path = \"/y\"\n",
        )
        .expect_err("a misspelt setting is refused");
        assert!(e.to_string().contains("sokcet_path"), "{e}");
    }
}
