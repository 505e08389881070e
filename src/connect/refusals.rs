//! Refusal pages, rendered once per brand and kept. A refusal page depends only on the operator's brand and the
//! refusal's title and text, so a refused request (a forged link above all) is answered with bytes already made:
//! rendering the page again was ~6 % of a forged link's CPU and most of its allocations.
use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Bytes;
use axum::http::HeaderValue;

use super::pages::Look;
use crate::api::embedded_connection::Branding;

/// Most pages kept. The texts come from a small set (some name a connector or a wait in seconds); past the bound
/// the cache starts over.
const MAX_PAGES: usize = 256;

pub struct RefusalPages {
    look: Look,
    /// The brand's name, else "Latchkey": the page's heading.
    heading: String,
    /// The pages' Content-Security-Policy (the same for all: no form, the brand's stylesheet and logo).
    csp: Option<HeaderValue>,
    /// title → text → page.
    pages: Mutex<HashMap<&'static str, HashMap<String, Bytes>>>,
}

impl RefusalPages {
    pub fn new(brand: &Branding) -> Self {
        let look = Look::new(brand);
        let csp = HeaderValue::from_str(&look.csp(None)).ok();
        let heading = brand.name.clone().unwrap_or_else(|| "Latchkey".into());
        Self { look, heading, csp, pages: Mutex::new(HashMap::new()) }
    }

    /// The page for a refusal, rendered at its first use.
    pub fn page(&self, title: &'static str, text: &str) -> Bytes {
        if let Some(p) = self.pages.lock().ok().and_then(|p| p.get(title).and_then(|t| t.get(text)).cloned()) {
            return p;
        }
        let page = Bytes::from(self.look.message(&self.heading, title, text, None, false));
        if let Ok(mut pages) = self.pages.lock() {
            if pages.values().map(HashMap::len).sum::<usize>() >= MAX_PAGES {
                pages.clear();
            }
            pages.entry(title).or_default().insert(text.to_string(), page.clone());
        }
        page
    }

    pub fn csp(&self) -> Option<&HeaderValue> {
        self.csp.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_page_is_the_page_rendered_for_the_brand() {
        let brand = Branding { name: Some("Acme".into()), primary_color: Some("#ffcc00".into()), ..Default::default() };
        let pages = RefusalPages::new(&brand);
        let look = Look::new(&brand);
        let first = pages.page("This link is not valid", "Check the link.");
        assert_eq!(first, look.message("Acme", "This link is not valid", "Check the link.", None, false).as_bytes());
        let again = pages.page("This link is not valid", "Check the link.");
        assert_eq!(first.as_ptr(), again.as_ptr(), "served from the cache, not rendered again");
        assert_ne!(pages.page("This link is not valid", "Other text."), first, "keyed by the text too");
        assert_eq!(pages.csp().unwrap().to_str().unwrap(), look.csp(None));
    }

    #[test]
    fn the_cache_is_bounded() {
        let pages = RefusalPages::new(&Branding::default());
        for i in 0..(3 * MAX_PAGES) {
            pages.page("Too many attempts", &format!("Wait {i} seconds and try again."));
        }
        assert!(pages.pages.lock().unwrap().values().map(HashMap::len).sum::<usize>() <= MAX_PAGES);
        assert!(String::from_utf8_lossy(&pages.page("t", "x")).contains("Latchkey"), "the default heading");
    }
}
