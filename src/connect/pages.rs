//! The pages the connect server shows: a credential form and outcome pages, in the organisation's brand. One
//! stylesheet plus the brand's colours, inline and allowed by their hashes in the Content-Security-Policy; the
//! logo from its own origin only; no scripts; every value escaped.
use std::sync::LazyLock;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::api::embedded_connection::Branding;

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
.fine a{color:var(--accent);font-weight:600}
.shell{width:100%;max-width:420px}
.org{display:flex;align-items:center;justify-content:center;gap:10px;margin:0 0 18px;font-weight:650;font-size:17px;color:var(--fg)}
.org img{height:40px;width:auto;max-width:200px;object-fit:contain}
.org .mark{width:32px;height:32px;border-radius:8px;background:var(--fg);color:var(--bg);display:flex;align-items:center;justify-content:center;font-size:15px}
.help{margin:14px 0 0;text-align:center;font-size:14px;color:var(--muted)}
.help a{color:var(--accent);font-weight:600;text-decoration:none}
.help a:hover{text-decoration:underline}
@media (max-width:480px){body{padding:12px;align-items:flex-start}main{padding:24px 20px}.org{margin:8px 0 14px}}
"#;

/// `'sha256-...'` of the stylesheet, for the CSP.
pub static STYLE_HASH: LazyLock<String> = LazyLock::new(|| hash(STYLE));

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

/// `#rrggbb`, else nothing: a colour goes into CSS, so nothing else may pass.
fn color(c: Option<&str>) -> Option<&str> {
    c.filter(|c| c.len() == 7 && c.starts_with('#') && c[1..].bytes().all(|b| b.is_ascii_hexdigit()))
}

/// An http(s) URL (and, for a help link, mailto:), parsed, else nothing.
fn link(u: Option<&str>, mailto: bool) -> Option<url::Url> {
    let u = url::Url::parse(u?).ok()?;
    match u.scheme() {
        "http" | "https" if u.host().is_some() => Some(u),
        "mailto" if mailto => Some(u),
        _ => None,
    }
}

/// Black or white text, whichever reads better on `hex` (relative luminance, WCAG).
fn text_on(hex: &str) -> &'static str {
    let ch = |i: usize| {
        let v = f64::from(u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0)) / 255.0;
        if v <= 0.03928 { v / 12.92 } else { ((v + 0.055) / 1.055).powf(2.4) }
    };
    let l = 0.2126 * ch(1) + 0.7152 * ch(3) + 0.0722 * ch(5);
    if l > 0.4 { "#111418" } else { "#ffffff" }
}

/// What a brand's fields say, each checked; what is not valid is left out (the CRD schema and the operator's
/// start-up checks refuse it before it gets here).
pub struct Look {
    name: Option<String>,
    logo: Option<url::Url>,
    support: Option<url::Url>,
    /// The brand's colours as CSS, when it has any.
    css: Option<String>,
}

impl Look {
    pub fn new(b: &Branding) -> Self {
        let mut css = String::new();
        if let Some(p) = color(b.primary_color.as_deref()) {
            css.push_str(&format!(":root{{--accent:{p};--accent-fg:{}}}", text_on(p)));
        }
        if let Some(bg) = color(b.background_color.as_deref()) {
            css.push_str(&format!("@media (prefers-color-scheme:light){{:root{{--bg:{bg}}}}}"));
        }
        Look {
            name: b.name.as_deref().map(str::trim).filter(|n| !n.is_empty()).map(String::from),
            logo: link(b.logo_url.as_deref(), false),
            support: link(b.support_url.as_deref(), true),
            css: (!css.is_empty()).then_some(css),
        }
    }

    /// The Content-Security-Policy for a page in this look: its stylesheets by hash, the logo's origin for
    /// images, forms to this server (and on to `form_target`'s origin, the application's return URL).
    pub fn csp(&self, form_target: Option<&str>) -> String {
        let target =
            form_target.and_then(|u| url::Url::parse(u).ok()).map(|u| format!(" {}", u.origin().ascii_serialization())).unwrap_or_default();
        let brand_style = self.css.as_deref().map(|c| format!(" {}", hash(c))).unwrap_or_default();
        let img = self.logo.as_ref().map(|u| format!("; img-src {}", u.origin().ascii_serialization())).unwrap_or_default();
        format!(
            "default-src 'none'; style-src {}{brand_style}{img}; form-action 'self'{target}; frame-ancestors 'none'; base-uri 'none'",
            *STYLE_HASH
        )
    }

    fn layout(&self, title: &str, connector: &str, body: &str) -> String {
        let brand_style = self.css.as_deref().map(|c| format!("<style>{c}</style>")).unwrap_or_default();
        let title = match &self.name {
            Some(n) => format!("{} · {}", esc(title), esc(n)),
            None => esc(title),
        };
        let org = match (&self.logo, &self.name) {
            // A logo usually carries the name; a screen reader reads it from the alt text.
            (Some(logo), name) => {
                format!(r#"<header class="org"><img src="{}" alt="{}"></header>"#, esc(logo.as_str()), esc(name.as_deref().unwrap_or("")))
            }
            (None, Some(name)) => {
                format!(
                    r#"<header class="org"><span class="mark" aria-hidden="true">{}</span><span>{}</span></header>"#,
                    esc(&initial(name)),
                    esc(name)
                )
            }
            (None, None) => String::new(),
        };
        let help = match &self.support {
            Some(u) => {
                let who = self.name.as_deref().map(|n| format!("{} support", esc(n))).unwrap_or_else(|| "support".into());
                format!(r#"<p class="help">Need help? <a href="{}" rel="noopener noreferrer">Contact {who}</a></p>"#, esc(u.as_str()))
            }
            None => String::new(),
        };
        let keeper = match &self.name {
            Some(n) => format!("{} keeps your credentials for this integration alone", esc(n)),
            None => "Your credentials are kept for this integration alone".into(),
        };
        format!(
            r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><meta name="referrer" content="no-referrer"><title>{title}</title><style>{STYLE}</style>{brand_style}</head><body><div class="shell">{org}<main><div class="brand"><div class="logo" aria-hidden="true">{logo}</div><div><p class="kicker">Connect</p><h1>{heading}</h1></div></div>{body}<p class="fine">{keeper} and never shown on a page again. Secured by Latchkey.</p></main>{help}</div></body></html>"#,
            logo = esc(&initial(connector)),
            heading = esc(connector),
        )
    }

    /// The credential form: the connector's name, who connects, the fields, and an error after a rejection. It
    /// posts back to the address it was served at, so it works behind any path prefix.
    pub fn form(&self, connector: &str, user: &str, fields: &[Field<'_>], values: &[(&str, String)], error: Option<&str>) -> String {
        let mut body = String::new();
        body.push_str(&format!("<p>Connect your {} account for <strong>{}</strong>.</p>", esc(connector), esc(user)));
        if let Some(e) = error {
            body.push_str(&format!(r#"<div class="error" role="alert" id="form-error">{}</div>"#, esc(e)));
        }
        body.push_str(r#"<form method="post" autocomplete="off">"#);
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
        self.layout(&format!("Connect {connector}"), connector, &body)
    }

    /// An outcome page: a heading line, an explanation, and an optional link back to the application.
    pub fn message(&self, connector: &str, title: &str, text: &str, back: Option<&str>, ok: bool) -> String {
        let mut body = format!(r#"<p class="{}" role="status">{}</p><p>{}</p>"#, if ok { "ok" } else { "error" }, esc(title), esc(text));
        if let Some(url) = back {
            body.push_str(&format!(r#"<a class="button" href="{}">Return to the application</a>"#, esc(url)));
        }
        self.layout(title, connector, &body)
    }
}

/// What is wrong with a brand's fields, one line each (for the operator's start-up check).
pub fn problems(b: &Branding) -> Vec<String> {
    let mut out = Vec::new();
    for (flag, v) in [("primary colour", &b.primary_color), ("background colour", &b.background_color)] {
        if let Some(v) = v
            && color(Some(v)).is_none()
        {
            out.push(format!("the brand's {flag} {v:?} is not #rrggbb"));
        }
    }
    if let Some(v) = &b.logo_url
        && link(Some(v), false).is_none()
    {
        out.push(format!("the brand's logo URL {v:?} is not an http(s) URL"));
    }
    if let Some(v) = &b.support_url
        && link(Some(v), true).is_none()
    {
        out.push(format!("the brand's support URL {v:?} is not an http(s) or mailto: URL"));
    }
    out
}

fn hash(css: &str) -> String {
    format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(Sha256::digest(css.as_bytes())))
}

/// A form field.
pub struct Field<'a> {
    pub name: &'a str,
    pub label: &'a str,
    pub secret: bool,
    pub autocomplete: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field() -> [Field<'static>; 1] {
        [Field { name: "api_key", label: "API key", secret: true, autocomplete: "off" }]
    }

    #[test]
    fn values_are_escaped() {
        let f = Look::new(&Branding::default()).form("<Git>", "a\"b", &field(), &[("api_key", "<s>".into())], Some("<bad>"));
        assert!(!f.contains("<Git>") && f.contains("&lt;Git&gt;"));
        assert!(!f.contains("<s>"), "secret values are never echoed");
        assert!(f.contains("&lt;bad&gt;"));
        assert!(STYLE_HASH.starts_with("'sha256-"));
    }

    #[test]
    fn the_brand_shows_and_its_colours_are_allowed_by_hash() {
        let b = Branding {
            name: Some("Acme <Corp>".into()),
            logo_url: Some("https://cdn.acme.example/logo.svg".into()),
            primary_color: Some("#ffcc00".into()),
            background_color: Some("#0a0b0c".into()),
            support_url: Some("mailto:help@acme.example".into()),
        };
        let look = Look::new(&b);
        let page = look.form("GitHub", "u", &field(), &[], None);
        assert!(page.contains("Acme &lt;Corp&gt;") && page.contains(r#"src="https://cdn.acme.example/logo.svg""#));
        assert!(page.contains(r#"href="mailto:help@acme.example""#) && page.contains("Contact Acme &lt;Corp&gt; support"));
        let css = ":root{--accent:#ffcc00;--accent-fg:#111418}@media (prefers-color-scheme:light){:root{--bg:#0a0b0c}}";
        assert!(page.contains(&format!("<style>{css}</style>")), "light text would not read on yellow: {page}");
        let csp = look.csp(None);
        assert!(csp.contains(&hash(css)) && csp.contains(&*STYLE_HASH) && csp.contains("img-src https://cdn.acme.example;"), "{csp}");
    }

    #[test]
    fn a_hostile_brand_cannot_inject_css_or_links() {
        let b = Branding {
            name: None,
            logo_url: Some("javascript:alert(1)".into()),
            primary_color: Some("red;}body{display:none".into()),
            background_color: Some("#12345".into()),
            support_url: Some("data:text/html,x".into()),
        };
        let look = Look::new(&b);
        let page = look.message("X", "t", "x", None, true);
        assert!(!page.contains("display:none") && !page.contains("javascript:") && !page.contains("data:text"));
        assert_eq!(look.csp(None).matches("sha256-").count(), 1, "no brand stylesheet, no img-src");
        assert_eq!(problems(&b).len(), 4);
        assert!(problems(&Branding { primary_color: Some("#A0b1C2".into()), ..Default::default() }).is_empty());
    }
}
