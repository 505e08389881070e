//! Driving the authorization-code consent without a browser, and PKCE.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng as _;
use sha2::{Digest, Sha256};
use url::Url;

use super::{AUTO_APPROVE_USER, TEST_PASSWORD};

/// A PKCE verifier and its S256 challenge.
#[derive(Clone, Debug)]
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Pkce {
        let bytes: [u8; 32] = rand::rng().random();
        let verifier = URL_SAFE_NO_PAD.encode(bytes);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        Pkce { verifier, challenge }
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Pkce::new()
    }
}

/// Who logs in at the form, and whether they approve. Used only when the server shows the form.
#[derive(Clone, Debug)]
pub struct Login {
    pub username: String,
    pub password: String,
    pub approve: bool,
}

impl Default for Login {
    fn default() -> Self {
        Login { username: AUTO_APPROVE_USER.into(), password: TEST_PASSWORD.into(), approve: true }
    }
}

impl Login {
    pub fn as_user(username: &str) -> Login {
        Login { username: username.into(), ..Login::default() }
    }
}

/// Where the consent ended: the redirect to the client with a code.
#[derive(Clone, Debug)]
pub struct AuthorizationRedirect {
    /// The whole redirect URL (to hand to a callback endpoint).
    pub url: Url,
    pub code: String,
    pub state: Option<String>,
    pub iss: Option<String>,
}

#[derive(Debug)]
pub enum ConsentError {
    /// The redirect to the client carried `error` (e.g. `access_denied`) instead of a code.
    Denied { error: String, description: Option<String>, url: String },
    /// The login form answered 401.
    LoginRejected,
    /// Something else: an unexpected status, a page without a form, too many hops.
    Unexpected(String),
}

impl std::fmt::Display for ConsentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConsentError::Denied { error, description, .. } => {
                write!(f, "authorization denied: {error} {}", description.as_deref().unwrap_or(""))
            }
            ConsentError::LoginRejected => {
                write!(f, "the login form rejected the username or password")
            }
            ConsentError::Unexpected(what) => write!(f, "{what}"),
        }
    }
}

impl std::error::Error for ConsentError {}

/// A cookie jar by hand: one browser's cookies, by name (paths and ports ignored, as a browser ignores ports).
#[derive(Default, Debug)]
struct CookieJar(BTreeMap<String, String>);

impl CookieJar {
    fn store(&mut self, headers: &reqwest::header::HeaderMap) {
        for header in headers.get_all(reqwest::header::SET_COOKIE) {
            let Ok(text) = header.to_str() else { continue };
            let mut parts = text.split(';');
            let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
                continue;
            };
            let expired = parts
                .map(|a| a.trim().to_ascii_lowercase())
                .any(|a| a == "max-age=0" || a.starts_with("max-age=-") || a.starts_with("expires=thu, 01 jan 1970"));
            if expired || value.is_empty() {
                self.0.remove(name.trim());
            } else {
                self.0.insert(name.trim().into(), value.trim().into());
            }
        }
    }

    fn header(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| self.0.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; "))
    }
}

const MAX_HOPS: usize = 20;

/// Drives the consent without a browser: from `start_url` (the provider's authorization URL, or a page that
/// redirects there, such as an operator's connect link), follows `Location` headers with a cookie jar and
/// redirects off, fills in the login form when the server shows one, and stops at the first redirect that
/// starts with `redirect_uri`, returning its `code` and `state`. The redirect URI itself is not requested.
pub async fn authorize_without_browser(start_url: &str, redirect_uri: &str, login: &Login) -> Result<AuthorizationRedirect, ConsentError> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client");
    let mut jar = CookieJar::default();
    let mut url = Url::parse(start_url).map_err(|e| ConsentError::Unexpected(format!("bad start URL: {e}")))?;
    let mut form: Option<Vec<(&str, String)>> = None;

    for _ in 0..MAX_HOPS {
        if url.as_str().starts_with(redirect_uri) {
            return redirect_outcome(url);
        }
        let mut request = match form.take() {
            Some(fields) => http.post(url.clone()).form(&fields),
            None => http.get(url.clone()),
        };
        if let Some(cookies) = jar.header() {
            request = request.header(reqwest::header::COOKIE, cookies);
        }
        let response = request.send().await.map_err(|e| ConsentError::Unexpected(format!("{url}: {e}")))?;
        jar.store(response.headers());
        let status = response.status();

        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| ConsentError::Unexpected(format!("{url}: {status} without Location")))?;
            url = url.join(location).map_err(|e| ConsentError::Unexpected(format!("bad Location {location}: {e}")))?;
            continue;
        }
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(ConsentError::LoginRejected);
        }
        let body = response.text().await.unwrap_or_default();
        if status.is_success() && body.contains("<form") {
            let action = form_action(&body).ok_or_else(|| ConsentError::Unexpected(format!("{url}: a form without an action")))?;
            url = url.join(&action).map_err(|e| ConsentError::Unexpected(format!("bad form action {action}: {e}")))?;
            let decision = if login.approve { "approve" } else { "deny" };
            let mut fields = vec![("decision", decision.to_string())];
            if body.contains("name=\"username\"") {
                fields.push(("username", login.username.clone()));
                fields.push(("password", login.password.clone()));
            }
            form = Some(fields);
            continue;
        }
        return Err(ConsentError::Unexpected(format!("{url}: {status} {}", body.chars().take(500).collect::<String>())));
    }
    Err(ConsentError::Unexpected(format!("no redirect to {redirect_uri} after {MAX_HOPS} hops (last {url})")))
}

fn form_action(html: &str) -> Option<String> {
    let form = &html[html.find("<form")?..];
    let start = form.find("action=\"")? + "action=\"".len();
    let end = form[start..].find('"')?;
    Some(form[start..start + end].replace("&amp;", "&"))
}

fn redirect_outcome(url: Url) -> Result<AuthorizationRedirect, ConsentError> {
    let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
    if let Some(error) = query.get("error") {
        return Err(ConsentError::Denied { error: error.clone(), description: query.get("error_description").cloned(), url: url.into() });
    }
    let code = query.get("code").cloned().ok_or_else(|| ConsentError::Unexpected(format!("redirect without code or error: {url}")))?;
    Ok(AuthorizationRedirect { code, state: query.get("state").cloned(), iss: query.get("iss").cloned(), url })
}
