//! `latchkey run`'s configuration: flags, each also read from the environment.
use std::net::SocketAddr;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "latchkey",
    version,
    about = "Kubernetes operator for embedded connections: each tenant activates an integration with its own credentials"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controllers, the connect server and the metrics/health endpoints.
    Run(Box<RunConfig>),
    /// Print the CustomResourceDefinitions (the YAML that crds/ holds).
    Crds,
    /// List the provider catalogue: the names `spec.provider` takes on a Connector.
    Providers,
    /// Every user of a connection across namespaces: phase, expiry, last run, and the connect link of those still
    /// to connect (also `kubectl latchkey users` when installed as `kubectl-latchkey`).
    Users(UsersArgs),
}

#[derive(Parser, Debug, Clone)]
pub struct UsersArgs {
    /// The EmbeddedConnection.
    #[arg(long)]
    pub connection: String,
    /// The connection's namespace (default: the kubeconfig context's namespace).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

#[derive(Parser, Debug, Clone)]
pub struct RunConfig {
    /// Where the connect server listens.
    #[arg(long, env = "LATCHKEY_CONNECT_BIND", default_value = "0.0.0.0:8080")]
    pub connect_bind: SocketAddr,
    /// The public URL users reach the connect server at; connect links and the OAuth redirect_uri
    /// (`<base>/oauth/callback`) are built from it.
    #[arg(long, env = "LATCHKEY_CONNECT_BASE_URL", default_value = "http://127.0.0.1:8080")]
    pub connect_base_url: String,
    /// The path the connect server serves under (`<prefix>/connect/...`, `<prefix>/oauth/callback`). Default: the
    /// path of `--connect-base-url`, so an Ingress that forwards `/latchkey/...` unchanged needs nothing more; set
    /// `/` when a proxy strips the prefix before it reaches the operator.
    #[arg(long, env = "LATCHKEY_CONNECT_PATH_PREFIX")]
    pub connect_path_prefix: Option<String>,
    /// Requests per minute one activation's link may take (after its signature verified); 0 turns the limit off.
    #[arg(long, env = "LATCHKEY_CONNECT_RATE_LIMIT", default_value_t = 60)]
    pub connect_rate_limit: u32,
    /// Requests one activation's link may take at once before the per-minute rate applies.
    #[arg(long, env = "LATCHKEY_CONNECT_RATE_BURST", default_value_t = 20)]
    pub connect_rate_burst: u32,
    /// The organisation's name on the connect page (an EmbeddedConnection's `spec.branding` wins).
    #[arg(long, env = "LATCHKEY_BRAND_NAME")]
    pub brand_name: Option<String>,
    /// URL of the organisation's logo on the connect page.
    #[arg(long, env = "LATCHKEY_BRAND_LOGO_URL")]
    pub brand_logo_url: Option<String>,
    /// The connect page's primary colour (buttons, links), `#rrggbb`.
    #[arg(long, env = "LATCHKEY_BRAND_PRIMARY_COLOR")]
    pub brand_primary_color: Option<String>,
    /// The connect page's background colour, `#rrggbb`.
    #[arg(long, env = "LATCHKEY_BRAND_BACKGROUND_COLOR")]
    pub brand_background_color: Option<String>,
    /// Where users get help: an http(s) or mailto: URL, linked from every connect page.
    #[arg(long, env = "LATCHKEY_BRAND_SUPPORT_URL")]
    pub brand_support_url: Option<String>,
    /// A PEM file of CA certificates to trust for provider calls (verification, tokens, revocation) besides the
    /// built-in roots: providers behind the organisation's private CA. The chart mounts it from a ConfigMap or Secret.
    #[arg(long, env = "LATCHKEY_CA_BUNDLE")]
    pub ca_bundle: Option<std::path::PathBuf>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(long, env = "LATCHKEY_METRICS_BIND", default_value = "0.0.0.0:9090")]
    pub metrics_bind: SocketAddr,
    /// Comma-separated namespaces to watch instead of the whole cluster.
    #[arg(long, env = "LATCHKEY_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// `text` or `json`.
    #[arg(long, env = "LATCHKEY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Take a Lease before reconciling, so that only one replica reconciles.
    #[arg(long, env = "LATCHKEY_LEADER_ELECTION", default_value_t = false, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Reconciles in flight per controller.
    #[arg(long, env = "LATCHKEY_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
    /// Where the Lease and the signing-key Secret live (default: the pod's namespace, else latchkey-system).
    #[arg(long, env = "LATCHKEY_OPERATOR_NAMESPACE")]
    pub operator_namespace: Option<String>,
    /// Secret with the HMAC key(s) for connect links and OAuth `state` (created when absent).
    #[arg(long, env = "LATCHKEY_SIGNING_KEY_SECRET", default_value = "latchkey-signing-key")]
    pub signing_key_secret: String,
    /// The leader-election Lease.
    #[arg(long, env = "LATCHKEY_LEASE_NAME", default_value = "latchkey")]
    pub lease_name: String,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl RunConfig {
    /// The namespace of the Lease and signing key.
    pub fn operator_namespace(&self) -> String {
        self.operator_namespace
            .clone()
            .or_else(|| {
                std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok().map(|s| s.trim().to_string())
            })
            .unwrap_or_else(|| "latchkey-system".into())
    }

    /// The connect server's path prefix: `--connect-path-prefix`, else the base URL's path; `""` for none, else
    /// `/segment[/segment...]` without a trailing slash.
    pub fn connect_path_prefix(&self) -> String {
        let raw = match &self.connect_path_prefix {
            Some(p) => p.clone(),
            None => url::Url::parse(&self.connect_base_url).map(|u| u.path().to_string()).unwrap_or_default(),
        };
        let segments: Vec<&str> = raw.split('/').filter(|s| !s.is_empty()).collect();
        if segments.is_empty() { String::new() } else { format!("/{}", segments.join("/")) }
    }

    /// The operator-wide brand of the connect page.
    pub fn brand(&self) -> crate::api::embedded_connection::Branding {
        crate::api::embedded_connection::Branding {
            name: self.brand_name.clone(),
            logo_url: self.brand_logo_url.clone(),
            primary_color: self.brand_primary_color.clone(),
            background_color: self.brand_background_color.clone(),
            support_url: self.brand_support_url.clone(),
        }
    }

    /// The namespaces to watch: `None` for the whole cluster.
    pub fn watched_namespaces(&self) -> Vec<Option<String>> {
        let ns: Vec<_> = self.namespaces.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).map(String::from).collect();
        if ns.is_empty() { vec![None] } else { ns.into_iter().map(Some).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let cli = Cli::try_parse_from(["latchkey", "run"]).unwrap();
        let Command::Run(c) = cli.command else { panic!() };
        assert_eq!(c.concurrency, 16);
        assert_eq!(c.connect_bind.port(), 8080);
        assert!(!c.leader_election);
        assert_eq!(c.watched_namespaces(), vec![None]);
    }

    #[test]
    fn the_path_prefix_follows_the_base_url_unless_set() {
        let parse = |args: &[&str]| {
            let Command::Run(c) = Cli::try_parse_from([&["latchkey", "run"], args].concat()).unwrap().command else { panic!() };
            c.connect_path_prefix()
        };
        assert_eq!(parse(&[]), "");
        assert_eq!(parse(&["--connect-base-url", "https://app.example.com/latchkey/"]), "/latchkey");
        assert_eq!(parse(&["--connect-base-url", "https://app.example.com/a/b", "--connect-path-prefix", "/"]), "");
        assert_eq!(parse(&["--connect-path-prefix", "x//y/"]), "/x/y");
    }

    #[test]
    fn namespaces_split_on_commas() {
        let cli = Cli::try_parse_from(["latchkey", "run", "--namespaces", "a,b", "--concurrency", "4"]).unwrap();
        let Command::Run(c) = cli.command else { panic!() };
        assert_eq!(c.watched_namespaces(), vec![Some("a".to_string()), Some("b".to_string())]);
        assert!(Cli::try_parse_from(["latchkey", "run", "--concurrency", "0"]).is_err());
    }
}
