//! The pages the connect server shows: a credential form and outcome pages. One stylesheet, inline and allowed by
//! its hash in the Content-Security-Policy; no scripts; every value escaped.
use std::sync::LazyLock;

use base64::Engine as _;
use sha2::{Digest, Sha256};

const STYLE: &str = r#"
:root{color-scheme:light dark;--bg:#f4f5f7;--card:#fff;--fg:#1c2430;--muted:#5b6675;--line:#d9dde3;--accent:#3754db;--accent-fg:#fff;--err:#b42318;--err-bg:#fef3f2;--ok:#067647}
@media (prefers-color-scheme:dark){:root{--bg:#0f1216;--card:#181c22;--fg:#e8ebef;--muted:#9aa4b1;--line:#2b313a;--accent:#7b93ff;--accent-fg:#0f1216;--err:#fda29b;--err-bg:#2a1614;--ok:#75e0a7}}
*{box-sizing:border-box}
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;background:var(--bg);color:var(--fg);font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;padding:24px}
main{width:100%;max-width:420px;background:var(--card);border:1px solid var(--line);border-radius:14px;padding:32px;box-shadow:0 8px 30px rgba(16,24,40,.08)}
.brand{display:flex;align-items:center;gap:12px;margin-bottom:20px}
.logo{width:44px;height:44px;border-radius:10px;background:var(--accent);color:var(--accent-fg);display:flex;align-items:center;justify-content:center;font-weight:700;font-size:20px}
.kicker{margin:0;color:var(--muted);font-size:13px;letter-spacing:.02em;text-transform:uppercase}
h1{margin:0;font-size:22px;line-height:1.25}
p{margin:0 0 16px;color:var(--muted)}
label{display:block;font-weight:600;font-size:14px;margin:16px 0 6px}
input{width:100%;padding:11px 12px;border:1px solid var(--line);border-radius:8px;background:transparent;color:var(--fg);font:inherit}
input:focus{outline:3px solid color-mix(in srgb,var(--accent) 35%,transparent);border-color:var(--accent)}
input[aria-invalid=true],input[aria-invalid=true]:focus{border-color:var(--err);outline-color:color-mix(in srgb,var(--err) 30%,transparent)}
button,.button{display:inline-block;width:100%;margin-top:24px;padding:12px 16px;border:0;border-radius:8px;background:var(--accent);color:var(--accent-fg);font:inherit;font-weight:600;text-align:center;text-decoration:none;cursor:pointer}
button:focus-visible,.button:focus-visible{outline:3px solid var(--fg);outline-offset:2px}
.error{border:1px solid var(--err);background:var(--err-bg);color:var(--err);border-radius:8px;padding:10px 12px;margin:0 0 8px;font-size:14px}
.ok{display:flex;align-items:center;gap:10px;color:var(--ok);font-weight:600;font-size:18px;margin-bottom:8px}
.ok::before{content:"\2713";flex:none;display:flex;align-items:center;justify-content:center;width:30px;height:30px;border-radius:50%;background:color-mix(in srgb,var(--ok) 15%,transparent);font-size:16px}
.fine{margin:24px 0 0;padding-top:16px;border-top:1px solid var(--line);font-size:13px;color:var(--muted);text-align:center}
@media (max-width:480px){body{padding:12px;align-items:flex-start}main{padding:24px 20px}}
"#;

/// `'sha256-...'` of the stylesheet, for the CSP.
pub static STYLE_HASH: LazyLock<String> =
    LazyLock::new(|| format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE.as_bytes()))));

/// HTML-escapes text for element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn initial(name: &str) -> String {
    name.chars().find(|c| c.is_alphanumeric()).map(|c| c.to_uppercase().to_string()).unwrap_or_else(|| "?".into())
}

fn layout(title: &str, connector: &str, body: &str) -> String {
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><meta name="referrer" content="no-referrer"><title>{title}</title><style>{STYLE}</style></head><body><main><div class="brand"><div class="logo" aria-hidden="true">{logo}</div><div><p class="kicker">Connect</p><h1>{heading}</h1></div></div>{body}<p class="fine">Secured by Latchkey. Your credentials are kept for this integration alone and are never shown on a page again.</p></main></body></html>"#,
        title = esc(title),
        logo = esc(&initial(connector)),
        heading = esc(connector),
    )
}

/// A form field.
pub struct Field {
    pub name: &'static str,
    pub label: &'static str,
    pub secret: bool,
    pub autocomplete: &'static str,
}

/// The credential form: the connector's name, who connects, the fields, and an error after a rejection.
pub fn form(connector: &str, user: &str, action: &str, fields: &[Field], values: &[(&str, String)], error: Option<&str>) -> String {
    let mut body = String::new();
    body.push_str(&format!("<p>Connect your {} account for <strong>{}</strong>.</p>", esc(connector), esc(user)));
    if let Some(e) = error {
        body.push_str(&format!(r#"<div class="error" role="alert" id="form-error">{}</div>"#, esc(e)));
    }
    body.push_str(&format!(r#"<form method="post" action="{}" autocomplete="off">"#, esc(action)));
    for (i, f) in fields.iter().enumerate() {
        let value =
            if f.secret { String::new() } else { values.iter().find(|(k, _)| *k == f.name).map(|(_, v)| esc(v)).unwrap_or_default() };
        let described = if error.is_some() { r#" aria-describedby="form-error" aria-invalid="true""# } else { "" };
        body.push_str(&format!(
            r#"<label for="{n}">{l}</label><input id="{n}" name="{n}" type="{t}" required spellcheck="false" autocomplete="{a}" value="{value}"{described}{focus}>"#,
            n = f.name,
            l = esc(f.label),
            t = if f.secret { "password" } else { "text" },
            a = f.autocomplete,
            focus = if i == 0 { " autofocus" } else { "" },
        ));
    }
    body.push_str(&format!(r#"<button type="submit">Connect {}</button></form>"#, esc(connector)));
    layout(&format!("Connect {connector}"), connector, &body)
}

/// An outcome page: a heading line, an explanation, and an optional link back to the application.
pub fn message(connector: &str, title: &str, text: &str, back: Option<&str>, ok: bool) -> String {
    let mut body = format!(r#"<p class="{}" role="status">{}</p><p>{}</p>"#, if ok { "ok" } else { "error" }, esc(title), esc(text));
    if let Some(url) = back {
        body.push_str(&format!(r#"<a class="button" href="{}">Return to the application</a>"#, esc(url)));
    }
    layout(title, connector, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        let f = form(
            "<Git>",
            "a\"b",
            "/connect/x",
            &[Field { name: "api_key", label: "API key", secret: true, autocomplete: "off" }],
            &[("api_key", "<s>".into())],
            Some("<bad>"),
        );
        assert!(!f.contains("<Git>") && f.contains("&lt;Git&gt;"));
        assert!(!f.contains("<s>"), "secret values are never echoed");
        assert!(f.contains("&lt;bad&gt;"));
        assert!(STYLE_HASH.starts_with("'sha256-"));
    }
}
