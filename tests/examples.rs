//! The manifests in examples/ are what a GitOps repository would hold: the apiserver accepts them (schemas and CEL
//! rules included) and, with the operator running, the OAuth2 activation waits for its user with a connect link.
//! The namespaces get a random suffix so that runs never meet.
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use latchkey::api::UserActivation;
use support::operator::Operator;
use support::{bed, wait_for_value};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
const NAMESPACES: [&str; 3] = ["integrations", "tenant-acme", "tenant-globex"];

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let cached = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/latchkey/bin/kubectl"));
    let out = Command::new(cached.filter(|p| p.exists()).unwrap_or_else(|| "kubectl".into()))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("kubectl");
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes the example namespaces when the test ends, also when it fails.
struct Cleanup(PathBuf, Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::env::var("LATCHKEY_TEST_KEEP_NAMESPACES").is_ok_and(|v| !v.is_empty() && v != "0") {
            return;
        }
        let mut args = vec!["delete".to_string(), "namespace".into(), "--wait=false".into(), "--ignore-not-found".into()];
        args.extend(self.1.iter().cloned());
        let _ = Command::new(
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/latchkey/bin/kubectl")).unwrap_or_else(|| "kubectl".into()),
        )
        .args(&args)
        .env("KUBECONFIG", &self.0)
        .output();
    }
}

#[tokio::test]
async fn the_examples_apply_and_the_oauth_activation_waits_for_its_user() {
    let bed = bed().await;
    let suffix: String = (0..6).map(|_| (b'a' + rand::random_range(0..26u8)) as char).collect();
    let renamed = |ns: &str| format!("ex-{ns}-{suffix}");
    let dir = tempfile::tempdir().unwrap();

    // The examples with their namespaces renamed (only where a namespace is named, not in URLs).
    let mut files: Vec<_> =
        std::fs::read_dir(EXAMPLES).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "yaml")).collect();
    files.retain(|p| !p.ends_with("kustomization.yaml"));
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    for f in &files {
        let mut text = std::fs::read_to_string(f).unwrap();
        for ns in NAMESPACES {
            for key in ["name: ", "namespace: "] {
                text = text.replace(&format!("{key}{ns}\n"), &format!("{key}{}\n", renamed(ns)));
            }
        }
        std::fs::write(dir.path().join(f.file_name().unwrap()), text).unwrap();
    }
    let _cleanup = Cleanup(bed.kubeconfig.clone(), NAMESPACES.iter().map(|n| renamed(n)).collect());
    let d = dir.path().to_str().unwrap();

    // Namespaces first (a server-side dry run cannot create objects in namespaces that do not exist yet), then a
    // dry run of everything, then the real apply.
    kubectl(&bed.kubeconfig, &["apply", "-f", &format!("{d}/00-namespaces.yaml")]);
    let dry = kubectl(&bed.kubeconfig, &["apply", "--dry-run=server", "-f", d]);
    assert!(dry.contains("useractivation.latchkey.dev/github created (server dry run)"), "{dry}");
    let applied = kubectl(&bed.kubeconfig, &["apply", "-f", d]);
    for obj in [
        "connector.latchkey.dev/acme-api",
        "connector.latchkey.dev/billing",
        "connector.latchkey.dev/github",
        "connector.latchkey.dev/legacy-crm",
        "connector.latchkey.dev/open-data",
        "embeddedconnection.latchkey.dev/acme-sync",
        "embeddedconnection.latchkey.dev/github-sync",
        "useractivation.latchkey.dev/acme",
        "useractivation.latchkey.dev/github",
        "connector.latchkey.dev/shopify",
        "useractivation.latchkey.dev/shopify",
    ] {
        assert!(applied.contains(obj), "{obj} not applied:\n{applied}");
    }

    // With the operator, Globex's GitHub activation (no credentials: the connect flow) waits for its user with a link.
    let watched: Vec<String> = NAMESPACES.iter().map(|n| renamed(n)).collect();
    let watched: Vec<&str> = watched.iter().map(String::as_str).collect();
    let op = Operator::start(&bed, "examples", &watched, &[]).await;
    let api: kube::Api<UserActivation> = kube::Api::namespaced(bed.client(), &renamed("tenant-globex"));
    let url = wait_for_value("the GitHub activation's connect link", Duration::from_secs(30), || async {
        let ua = api.get("github").await.map_err(|e| e.to_string())?;
        let st = ua.status.unwrap_or_default();
        match (st.phase, st.connect_url) {
            (Some(latchkey::api::user_activation::Phase::AwaitingUser), Some(url)) => Ok(url),
            (phase, _) => Err(format!("phase {phase:?}, conditions {:?}", st.conditions)),
        }
    })
    .await;
    assert!(url.starts_with(&op.connect_base_url), "{url}");
    // Acme's open-data activation (auth method `none`) is Active at once, without credentials.
    let acme: kube::Api<UserActivation> = kube::Api::namespaced(bed.client(), &renamed("tenant-acme"));
    wait_for_value("the open-data activation Active", Duration::from_secs(30), || async {
        let st = acme.get("open-data").await.map_err(|e| e.to_string())?.status.unwrap_or_default();
        match st.phase {
            Some(latchkey::api::user_activation::Phase::Active) if st.secret_name.is_none() => Ok(()),
            phase => Err(format!("phase {phase:?}, conditions {:?}", st.conditions)),
        }
    })
    .await;

    // Acme's Shopify activation: its address is still to come, so its connect page asks for the shop first.
    let shop_link = wait_for_value("the Shopify activation's connect link", Duration::from_secs(30), || async {
        let st = acme.get("shopify").await.map_err(|e| e.to_string())?.status.unwrap_or_default();
        st.connect_url.ok_or_else(|| format!("conditions {:?}", st.conditions))
    })
    .await;
    let page = reqwest::get(&shop_link).await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains(r#"name="instance.shop""#) && page.contains("Shop name"), "{page}");
}
