//! The Helm chart's RBAC on the real control plane: the operator running as the chart's ServiceAccount (a token
//! from the TokenRequest API, nothing else) activates an API-key tenant, and the ServiceAccount cannot do what it
//! has no business doing — the checks a platform engineer makes with `kubectl auth can-i --as=...`.
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use latchkey::api::{Connector, EmbeddedConnection, UserActivation};
use serde_json::json;
use support::operator::Operator;
use support::{Bed, bed, namespace, wait_for_value};

const T: Duration = Duration::from_secs(60);
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/latchkey");

#[test]
fn the_charts_crds_are_the_crds_dir() {
    let crds = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/latchkey.dev_crds.yaml")).unwrap();
    let chart = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/charts/latchkey/files/crds.yaml")).unwrap();
    assert!(crds == chart, "charts/latchkey/files/crds.yaml differs from crds/: run scripts/sync-chart-crds.sh (make crds does)");
}

/// helm, kubectl: the test bed's builds in ~/.cache/latchkey/bin when there, else from PATH.
fn tool(name: &str) -> Command {
    let cached = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/latchkey/bin").join(name));
    let mut c = Command::new(cached.filter(|p| p.exists()).unwrap_or_else(|| PathBuf::from(name)));
    c.stdin(std::process::Stdio::null());
    c
}

fn run(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Helm release of the chart with the operator's Deployment off (RBAC, ServiceAccount): uninstalled on drop, so
/// that its cluster-scoped ClusterRole and binding do not outlive the test.
struct Release {
    name: String,
    namespace: String,
    kubeconfig: PathBuf,
}

impl Release {
    fn install(bed: &Bed, name: &str, namespace: &str, values: &[&str]) -> Release {
        let mut c = tool("helm");
        c.args(["install", name, CHART, "--namespace", namespace, "--set", "operator.enabled=false", "--set", "crds.install=false"]);
        for v in values {
            c.args(["--set", v]);
        }
        c.env("KUBECONFIG", &bed.kubeconfig);
        run(c, &format!("helm install {name}"));
        Release { name: name.into(), namespace: namespace.into(), kubeconfig: bed.kubeconfig.clone() }
    }

    /// The chart's ServiceAccount: `<release>-latchkey`.
    fn service_account(&self) -> String {
        format!("{}-latchkey", self.name)
    }

    fn subject(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.service_account())
    }

    /// A short-lived token for the ServiceAccount (TokenRequest API, as `kubectl create token` does).
    fn token(&self) -> String {
        let mut c = tool("kubectl");
        c.args(["create", "token", &self.service_account(), "-n", &self.namespace, "--duration=1h"]).env("KUBECONFIG", &self.kubeconfig);
        run(c, "kubectl create token").trim().to_string()
    }

    /// `kubectl auth can-i <args> --as <the ServiceAccount>`.
    fn can_i(&self, args: &[&str]) -> bool {
        let mut c = tool("kubectl");
        c.args(["auth", "can-i"]).args(args).args(["--as", &self.subject()]).env("KUBECONFIG", &self.kubeconfig);
        let out = c.output().expect("kubectl auth can-i");
        match String::from_utf8_lossy(&out.stdout).trim() {
            "yes" => true,
            "no" => false,
            other => panic!("kubectl auth can-i {args:?}: {other:?} {}", String::from_utf8_lossy(&out.stderr)),
        }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = tool("helm")
            .args(["uninstall", &self.name, "--namespace", &self.namespace, "--wait", "--timeout", "30s"])
            .env("KUBECONFIG", &self.kubeconfig)
            .output();
    }
}

/// A kubeconfig that authenticates with only `token`: what a pod of the chart's Deployment would have.
fn token_kubeconfig(bed: &Bed, token: &str, path: &Path) {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(bed.ca_pem());
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: bed\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: sa\n  context: {{cluster: bed, user: sa}}\ncurrent-context: sa\n",
        bed.apiserver_url
    );
    std::fs::write(path, yaml).unwrap();
}

fn suffix() -> String {
    (0..6).map(|_| (b'a' + rand::random_range(0..26u8)) as char).collect()
}

#[tokio::test]
async fn the_charts_service_account_activates_an_api_key_tenant_and_sees_only_watched_namespaces() {
    let bed = bed().await;
    let client = bed.client();
    let integrations = namespace(&bed, "rbac-integrations").await;
    let tenant = namespace(&bed, "rbac-tenant").await;
    let elsewhere = namespace(&bed, "rbac-elsewhere").await;
    let (ins, tns) = (integrations.name().to_string(), tenant.name().to_string());

    // Install the chart's RBAC, watching the two namespaces; the release (so the Lease and signing key) lives in
    // the integrations namespace.
    let release = Release::install(&bed, &format!("rbac-{}", suffix()), &ins, &[&format!("watchNamespaces={{{ins},{tns}}}")]);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("sa.kubeconfig");
    token_kubeconfig(&bed, &release.token(), &kubeconfig);

    // The organisation's API-key connector and connection, a tenant admitted by label, the tenant's key.
    let connector: Connector = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector", "metadata": {"name": "acme-api"},
        "spec": {"baseUrl": "https://api.acme.example", "authMethods": [{"name": "token", "apiKey": {"in": "Header", "name": "Authorization", "prefix": "Bearer "}}]}
    }))
    .unwrap();
    integrations.api::<Connector>().create(&PostParams::default(), &connector).await.unwrap();
    let ec: EmbeddedConnection = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": "acme-sync"},
        "spec": {
            "connectorRef": {"name": "acme-api"}, "authMethod": "token",
            "allowedNamespaces": {"matchLabels": {"latchkey.dev/tenant-of": ins}},
            "job": {"template": {"spec": {"containers": [{"name": "sync", "image": "busybox", "command": ["sh", "-c", "echo sync"]}]}}}
        }
    }))
    .unwrap();
    integrations.api::<EmbeddedConnection>().create(&PostParams::default(), &ec).await.unwrap();
    let label = json!({"metadata": {"labels": {"latchkey.dev/tenant-of": ins}}});
    Api::<Namespace>::all(client.clone()).patch(&tns, &PatchParams::default(), &Patch::Merge(&label)).await.unwrap();
    let key: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "acme-key"}, "stringData": {"api_key": "rbac-test-key-0001"}
    }))
    .unwrap();
    tenant.api::<Secret>().create(&PostParams::default(), &key).await.unwrap();
    let ua: UserActivation = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": "acme"},
        "spec": {"connectionRef": {"name": "acme-sync", "namespace": ins}, "user": {"id": "acme-42"}, "credentialsSecretRef": {"name": "acme-key"}}
    }))
    .unwrap();
    tenant.api::<UserActivation>().create(&PostParams::default(), &ua).await.unwrap();

    // The operator, as the ServiceAccount, with leader election as the chart runs it.
    let op = Operator::start_as(&bed, &kubeconfig, "helm_rbac", &[&ins, &tns], &["--leader-election=true", "--lease-name=latchkey"]).await;

    let activations = tenant.api::<UserActivation>();
    let status = wait_for_value("the activation Ready=True as the chart's ServiceAccount", T, || async {
        let ua = activations.get("acme").await.map_err(|e| e.to_string())?;
        let st = ua.status.clone().unwrap_or_default();
        match st.conditions.iter().find(|c| c.type_ == "Ready") {
            Some(c) if c.status == "True" => Ok(st),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let secret_name = status.secret_name.clone().expect("status.secretName");
    tenant.api::<Secret>().get(&secret_name).await.unwrap_or_else(|e| panic!("the credentials Secret {secret_name}: {e}"));
    let jobs = tenant.api::<Job>();
    wait_for_value("a Job for the activation", T, || async {
        let l = jobs.list(&ListParams::default().labels("latchkey.dev/activation=acme")).await.map_err(|e| e.to_string())?;
        if l.items.is_empty() { Err("no Job yet".to_string()) } else { Ok(()) }
    })
    .await;
    let log = op.log();
    assert!(log.contains("acquired the Lease"), "the ServiceAccount could not take the Lease:\n{log}");
    assert!(!log.to_lowercase().contains("forbidden"), "the operator met a forbidden request as the chart's ServiceAccount:\n{log}");

    // What the ServiceAccount can do where it works...
    for (args, why) in [
        (vec!["list", "secrets", "-n", &tns], "watch owned and source Secrets (by label)"),
        (vec!["create", "jobs.batch", "-n", &tns], "start the tenant's Job"),
        (vec!["patch", "useractivations.latchkey.dev", "--subresource=status", "-n", &tns], "report status"),
        (vec!["list", "namespaces"], "read namespaces' labels for allowedNamespaces"),
        (vec!["patch", "leases.coordination.k8s.io/latchkey", "-n", &ins], "renew its Lease"),
        (vec!["get", "secrets/latchkey-signing-key", "-n", &ins], "read its signing key"),
    ] {
        assert!(release.can_i(&args), "the ServiceAccount should be able to {why}: can-i {args:?}");
    }
    // ...and what it cannot.
    let other = elsewhere.name();
    for (args, why) in [
        (vec!["get", "secrets", "-n", other], "read Secrets of a namespace it does not watch"),
        (vec!["list", "secrets", "--all-namespaces"], "list Secrets cluster-wide"),
        (vec!["list", "useractivations.latchkey.dev", "-n", other], "see activations of an unwatched namespace"),
        (vec!["create", "pods", "-n", &tns], "create pods directly"),
        (vec!["update", "configmaps", "-n", &tns], "change ConfigMaps"),
        (vec!["create", "rolebindings.rbac.authorization.k8s.io", "-n", &tns], "grant itself rights"),
        (vec!["create", "serviceaccounts/token", "-n", &tns], "mint tokens"),
        (vec!["delete", "namespaces"], "delete namespaces"),
        (vec!["patch", "leases.coordination.k8s.io/someone-elses", "-n", &ins], "take other Leases"),
        (vec!["update", "connectors.latchkey.dev", "-n", &ins], "change the organisation's Connectors"),
    ] {
        assert!(!release.can_i(&args), "the ServiceAccount must not {why}: can-i {args:?}");
    }
    // Not only on paper: the apiserver refuses the ServiceAccount's own request.
    let sa_client = bed.client_with_token(&release.token());
    let err = Api::<Secret>::namespaced(sa_client, other).list(&ListParams::default()).await.expect_err("listing Secrets elsewhere");
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 403), "{err}");

    drop(op);
    drop(release);
}

#[tokio::test]
async fn cluster_wide_rbac_reads_everywhere_but_changes_only_what_it_owns() {
    let bed = bed().await;
    let home = namespace(&bed, "rbac-cluster").await;
    let release = Release::install(&bed, &format!("rbac-{}", suffix()), home.name(), &[]);
    for args in [
        vec!["list", "useractivations.latchkey.dev", "--all-namespaces"],
        vec!["watch", "secrets", "--all-namespaces"],
        vec!["create", "jobs.batch", "-n", "default"],
        vec!["create", "events.events.k8s.io", "-n", "default"],
        vec!["update", "useractivations.latchkey.dev/finalizers", "-n", "default"],
    ] {
        assert!(release.can_i(&args), "can-i {args:?}");
    }
    // RBAC cannot limit a list to a label selector: cluster-wide, `list secrets` covers every Secret. The operator
    // itself lists only by label (metadata only); use watchNamespaces to confine it.
    for args in [
        vec!["create", "pods", "-n", "default"],
        vec!["update", "secrets", "-n", "default"],
        vec!["delete", "configmaps", "-n", "default"],
        vec!["patch", "deployments.apps", "-n", "default"],
        vec!["create", "clusterrolebindings.rbac.authorization.k8s.io"],
        vec!["delete", "namespaces"],
        vec!["update", "connectors.latchkey.dev", "-n", "default"],
        vec!["delete", "useractivations.latchkey.dev", "-n", "default"],
        vec!["patch", "leases.coordination.k8s.io/kube-scheduler", "-n", "kube-system"],
    ] {
        assert!(!release.can_i(&args), "must not: can-i {args:?}");
    }
    drop(release);
}

/// A tenant namespace's own people use the rights they already hold there: whoever is bound to Kubernetes' `admin`
/// or `edit` role manages its activations, `view` reads them, and none of this opens the credentials Secrets or
/// another namespace.
#[tokio::test]
async fn namespace_admins_manage_activations_and_viewers_read_them_through_the_default_roles() {
    let bed = bed().await;
    let home = namespace(&bed, "rbac-agg").await;
    let tenant = namespace(&bed, "rbac-agg-tenant").await;
    let other = namespace(&bed, "rbac-agg-other").await;
    let release = Release::install(&bed, &format!("agg-{}", suffix()), home.name(), &[]);
    let (admin, viewer) = (format!("tenant-admin-{}", suffix()), format!("tenant-viewer-{}", suffix()));
    for (user, role) in [(&admin, "admin"), (&viewer, "view")] {
        let rb: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": format!("{role}-{user}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
        }))
        .unwrap();
        tenant.api::<k8s_openapi::api::rbac::v1::RoleBinding>().create(&PostParams::default(), &rb).await.unwrap();
    }
    let can_i = |user: &str, args: &[&str]| {
        let mut c = tool("kubectl");
        c.args(["auth", "can-i"]).args(args).args(["--as", user]).env("KUBECONFIG", &bed.kubeconfig);
        c.output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "yes").unwrap_or(false)
    };
    let ns = tenant.name();
    // The controller-manager aggregates the chart's rules into the default roles a moment after the install.
    wait_for_value("the chart's rules aggregated into `admin`", T, || async {
        if can_i(&admin, &["create", "useractivations.latchkey.dev", "-n", ns]) { Ok(()) } else { Err("not yet".to_string()) }
    })
    .await;
    wait_for_value("the chart's rules aggregated into `view`", T, || async {
        if can_i(&viewer, &["list", "useractivations.latchkey.dev", "-n", ns]) { Ok(()) } else { Err("not yet".to_string()) }
    })
    .await;
    for (user, args) in [
        (&admin, vec!["patch", "useractivations.latchkey.dev", "-n", ns]),
        (&admin, vec!["delete", "useractivations.latchkey.dev", "-n", ns]),
        (&admin, vec!["create", "embeddedconnections.latchkey.dev", "-n", ns]),
        (&viewer, vec!["get", "connectors.latchkey.dev", "-n", ns]),
        (&viewer, vec!["watch", "embeddedconnections.latchkey.dev", "-n", ns]),
    ] {
        assert!(can_i(user, &args), "{user} should be able to: can-i {args:?}");
    }
    for (user, args) in [
        (&viewer, vec!["create", "useractivations.latchkey.dev", "-n", ns]),
        (&viewer, vec!["patch", "useractivations.latchkey.dev", "-n", ns]),
        (&viewer, vec!["get", "secrets", "-n", ns]),
        (&viewer, vec!["patch", "useractivations.latchkey.dev", "--subresource=status", "-n", ns]),
        (&admin, vec!["list", "useractivations.latchkey.dev", "-n", other.name()]),
        (&admin, vec!["get", "secrets", "-n", other.name()]),
        (&admin, vec!["list", "useractivations.latchkey.dev", "--all-namespaces"]),
    ] {
        assert!(!can_i(user, &args), "{user} must not: can-i {args:?}");
    }
    drop(release);
    // The roles go with the release: the default roles lose the rules again.
    wait_for_value("the rules leave `view` with the release", T, || async {
        if can_i(&viewer, &["list", "useractivations.latchkey.dev", "-n", ns]) { Err("still there".to_string()) } else { Ok(()) }
    })
    .await;
}
