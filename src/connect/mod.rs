//! The connect server: where end users bring their own credentials.
/// Settings of the connect server that reconciles need (to publish connect links).
pub struct ConnectConfig {
    pub base_url: String,
}
