//! The providers Latchkey knows by name: facts from each provider's public documentation (the `docs` links).
//!
//! Values containing `{param}` are per-tenant addresses (a Shopify shop, a Zendesk subdomain, a Salesforce
//! instance). An entry whose `instance_parameters` say where every parameter comes from gives a Connector its
//! templates together with those parameters and its `allowed_hosts`; an entry without them (Mailchimp's data
//! centre) keeps the template as documentation only and never copies it into a Connector.
use crate::api::connector::{ApiKeyLocation, ClientAuth, HttpMethod, ParameterPart, ParameterSource};

/// One provider.
#[derive(Clone, Copy, Debug)]
pub struct Provider {
    /// What `spec.provider` names: lower-case, `[a-z0-9-]`.
    pub id: &'static str,
    /// Shown on the connect page.
    pub name: &'static str,
    /// The API's base URL; may be a `{param}` template (see `tenant`).
    pub base_url: &'static str,
    /// The provider's documentation of its API authentication.
    pub docs: &'static str,
    /// Set when part of the address is per tenant: which parameter and where its value comes from.
    pub tenant: Option<&'static str>,
    /// Where each `{parameter}` of the entry's URLs comes from (a Connector's `instanceParameters`); empty when
    /// the entry's templates cannot be filled by Latchkey.
    pub instance_parameters: &'static [Param],
    /// The hosts the templated URLs may resolve to (a Connector's `allowedHosts`).
    pub allowed_hosts: &'static [&'static str],
    pub oauth2: Option<OAuth2>,
    pub api_key: Option<ApiKey>,
    /// HTTP basic authentication (what the username and password are, in `notes`).
    pub basic: bool,
    /// A request that succeeds only with a working credential, relative to the base URL.
    pub verification: Option<Verify>,
    /// Token-response quirks and whatever a Connector author should know.
    pub notes: &'static str,
}

/// OAuth2 authorization-code facts.
#[derive(Clone, Copy, Debug)]
pub struct OAuth2 {
    pub authorization_url: &'static str,
    pub token_url: &'static str,
    /// An RFC 7009 endpoint only (`token=` form post); providers with another revocation API have none here.
    pub revocation_url: Option<&'static str>,
    pub scopes: &'static [&'static str],
    pub scope_separator: &'static str,
    pub pkce: bool,
    pub client_auth: ClientAuth,
    pub authorization_params: &'static [(&'static str, &'static str)],
    /// Extra form parameters of every token request (a Connector's `tokenParams`), e.g. Shopify's `expiring=1`.
    pub token_params: &'static [(&'static str, &'static str)],
    /// Non-standard token-response fields worth keeping (a Connector's `tokenResponseFields`).
    pub token_response_fields: &'static [&'static str],
}

/// One `{parameter}` of a per-tenant entry and where its value comes from.
#[derive(Clone, Copy, Debug)]
pub struct Param {
    pub name: &'static str,
    pub from: ParameterSource,
    pub part: ParameterPart,
    /// The connect page's label, for `ConnectPage`.
    pub label: Option<&'static str>,
}

/// A parameter the connect page asks the user for (a subdomain-like value).
const fn asked(name: &'static str, label: &'static str) -> Param {
    Param { name, from: ParameterSource::ConnectPage, part: ParameterPart::Value, label: Some(label) }
}

/// Where an API key goes.
#[derive(Clone, Copy, Debug)]
pub struct ApiKey {
    pub location: ApiKeyLocation,
    pub name: &'static str,
    pub prefix: Option<&'static str>,
}

#[derive(Clone, Copy, Debug)]
pub struct Verify {
    pub method: HttpMethod,
    pub path: &'static str,
}

const OAUTH: OAuth2 = OAuth2 {
    authorization_url: "",
    token_url: "",
    revocation_url: None,
    scopes: &[],
    scope_separator: " ",
    pkce: true,
    client_auth: ClientAuth::Body,
    authorization_params: &[],
    token_params: &[],
    token_response_fields: &[],
};
const BEARER: ApiKey = ApiKey { location: ApiKeyLocation::Header, name: "Authorization", prefix: Some("Bearer ") };
const fn header(name: &'static str) -> ApiKey {
    ApiKey { location: ApiKeyLocation::Header, name, prefix: None }
}
const fn get(path: &'static str) -> Option<Verify> {
    Some(Verify { method: HttpMethod::GET, path })
}
const P: Provider = Provider {
    id: "",
    name: "",
    base_url: "",
    docs: "",
    tenant: None,
    instance_parameters: &[],
    allowed_hosts: &[],
    oauth2: None,
    api_key: None,
    basic: false,
    verification: None,
    notes: "",
};

/// The catalogue, sorted by id.
pub static PROVIDERS: &[Provider] = &[
    // Checked 2026-11-26: airtable.com/developers/web/api/oauth-reference (authorize URL, space-delimited scopes, code_challenge with
    // S256 among the authorization parameters, basic authentication for confidential clients).
    Provider {
        id: "airtable",
        name: "Airtable",
        base_url: "https://api.airtable.com/v0",
        docs: "https://airtable.com/developers/web/api/oauth-reference",
        oauth2: Some(OAuth2 {
            authorization_url: "https://airtable.com/oauth2/v1/authorize",
            token_url: "https://airtable.com/oauth2/v1/token",
            scopes: &["data.records:read", "schema.bases:read"],
            client_auth: ClientAuth::Basic,
            ..OAUTH
        }),
        api_key: Some(BEARER),
        verification: get("/meta/whoami"),
        notes: "PKCE is required. Access tokens last 60 minutes; refresh tokens rotate. API key: a personal access token.",
        ..P
    },
    // Checked 2026-11-26: docs.anthropic.com/en/api/overview (x-api-key on every request) and docs.anthropic.com/en/api/models-list
    // (GET /v1/models takes anthropic-version). The same pages now also live under platform.claude.com/docs.
    Provider {
        id: "anthropic",
        name: "Anthropic",
        base_url: "https://api.anthropic.com/v1",
        docs: "https://docs.anthropic.com/en/api/overview",
        api_key: Some(header("x-api-key")),
        notes: "Requests also need an `anthropic-version` header (e.g. 2023-06-01), which the Job's own code sends; no verification request, since GET /v1/models needs that header too.",
        ..P
    },
    // Checked 2026-11-26: developers.asana.com/docs/oauth quick reference (GET /-/oauth_authorize, POST /-/oauth_token, POST
    // /-/oauth_revoke). PKCE support is from Asana's OAuth guide as read before; not re-confirmed in this pass.
    Provider {
        id: "asana",
        name: "Asana",
        base_url: "https://app.asana.com/api/1.0",
        docs: "https://developers.asana.com/docs/oauth",
        oauth2: Some(OAuth2 {
            authorization_url: "https://app.asana.com/-/oauth_authorize",
            token_url: "https://app.asana.com/-/oauth_token",
            revocation_url: Some("https://app.asana.com/-/oauth_revoke"),
            ..OAUTH
        }),
        api_key: Some(BEARER),
        verification: get("/users/me"),
        notes: "Access tokens last one hour. Scopes are configured on the app unless listed. API key: a personal access token.",
        ..P
    },
    // Checked 2026-11-26: developer.atlassian.com/cloud/oauth/getting-started/implementing-oauth-3lo (authorize URL, space-separated
    // scopes, prompt=consent, code exchange at auth.atlassian.com/oauth/token) and .../cloud/jira/platform/oauth-2-3lo-apps/
    // (audience=api.atlassian.com, offline_access, rotating refresh tokens, /ex/{product}/{cloudid}). PKCE is not documented.
    Provider {
        id: "atlassian",
        name: "Atlassian (Jira, Confluence)",
        base_url: "https://api.atlassian.com",
        docs: "https://developer.atlassian.com/cloud/oauth/getting-started/implementing-oauth-3lo",
        tenant: Some(
            "cloudid: each site's id, from GET https://api.atlassian.com/oauth/token/accessible-resources; product APIs live under /ex/jira/{cloudid} and /ex/confluence/{cloudid}",
        ),
        oauth2: Some(OAuth2 {
            authorization_url: "https://auth.atlassian.com/authorize",
            token_url: "https://auth.atlassian.com/oauth/token",
            scopes: &["read:jira-user", "read:jira-work", "offline_access"],
            pkce: false,
            authorization_params: &[("audience", "api.atlassian.com"), ("prompt", "consent")],
            ..OAUTH
        }),
        verification: get("/me"),
        notes: "offline_access gives a rotating refresh token. Base URL is the gateway; Jobs add /ex/jira/{cloudid}.",
        ..P
    },
    // Checked 2026-11-26: developer.atlassian.com/cloud/bitbucket/oauth-2 (updated 2026-02: authorize and access_token URLs, the
    // code exchanged with `-u client_id:secret`, i.e. basic authentication). Not confirmed in this pass: the two-hour token lifetime.
    Provider {
        id: "bitbucket",
        name: "Bitbucket Cloud",
        base_url: "https://api.bitbucket.org/2.0",
        docs: "https://developer.atlassian.com/cloud/bitbucket/oauth-2/",
        oauth2: Some(OAuth2 {
            authorization_url: "https://bitbucket.org/site/oauth2/authorize",
            token_url: "https://bitbucket.org/site/oauth2/access_token",
            pkce: false,
            client_auth: ClientAuth::Basic,
            ..OAUTH
        }),
        verification: get("/user"),
        notes: "Scopes are set on the OAuth consumer. Access tokens last two hours.",
        ..P
    },
    // Checked 2026-11-26: developer.box.com/guides/authentication/tokens (access tokens 60 minutes, refresh tokens 60 days or one use)
    // and /tokens/access-tokens (POST https://api.box.com/oauth2/token, form body). Box documents no PKCE.
    Provider {
        id: "box",
        name: "Box",
        base_url: "https://api.box.com/2.0",
        docs: "https://developer.box.com/guides/authentication/oauth2/",
        oauth2: Some(OAuth2 {
            authorization_url: "https://account.box.com/api/oauth2/authorize",
            token_url: "https://api.box.com/oauth2/token",
            revocation_url: Some("https://api.box.com/oauth2/revoke"),
            pkce: false,
            ..OAUTH
        }),
        verification: get("/users/me"),
        notes: "Scopes are set on the app. Access tokens last about an hour; each refresh token is single-use (rotates).",
        ..P
    },
    // Checked 2026-11-26: developer.calendly.com/how-to-access-calendly-data-on-behalf-of-authenticated-users (authorize URL, two-hour
    // access tokens, refresh tokens valid until used) and developer.calendly.com/authentication (OAuth 2.1 or personal access tokens);
    // the token request's form body with code_verifier from Calendly's API reference preview. Not confirmed: the revoke URL's form.
    // owner and organization: fields of the token response in Calendly's API reference preview (calendly-preview.mintlify.app).
    Provider {
        id: "calendly",
        name: "Calendly",
        base_url: "https://api.calendly.com",
        docs: "https://developer.calendly.com/how-to-access-calendly-data-on-behalf-of-authenticated-users",
        oauth2: Some(OAuth2 {
            authorization_url: "https://auth.calendly.com/oauth/authorize",
            token_url: "https://auth.calendly.com/oauth/token",
            revocation_url: Some("https://auth.calendly.com/oauth/revoke"),
            token_response_fields: &["owner", "organization"],
            ..OAUTH
        }),
        api_key: Some(BEARER),
        verification: get("/users/me"),
        notes: "The token response names the user and organization URIs (owner, organization) that most API calls take; they are kept for Jobs. Access tokens last two hours; each refresh token lasts until it is used once. API key: a personal access token.",
        ..P
    },
    // Checked 2026-11-26: developer.clickup.com/docs/authentication (personal tokens pk_... sent as `Authorization: <token>`, never
    // expiring; authorization URL https://app.clickup.com/api, token URL .../api/v2/oauth/token). OAuth tokens not expiring is from
    // secondary sources only. ClickUp documents no PKCE.
    Provider {
        id: "clickup",
        name: "ClickUp",
        base_url: "https://api.clickup.com/api/v2",
        docs: "https://developer.clickup.com/docs/authentication",
        oauth2: Some(OAuth2 {
            authorization_url: "https://app.clickup.com/api",
            token_url: "https://api.clickup.com/api/v2/oauth/token",
            pkce: false,
            ..OAUTH
        }),
        api_key: Some(header("Authorization")),
        verification: get("/user"),
        notes: "Access tokens do not expire and no refresh token is issued: set defaultTokenLifetime long. API key: a personal token (pk_...) sent as is.",
        ..P
    },
    // Checked 2026-11-26: developers.cloudflare.com/api/resources/user/subresources/tokens/methods/verify (GET /user/tokens/verify,
    // Bearer) and .../accounts/subresources/tokens/methods/verify (account-owned tokens).
    Provider {
        id: "cloudflare",
        name: "Cloudflare",
        base_url: "https://api.cloudflare.com/client/v4",
        docs: "https://developers.cloudflare.com/fundamentals/api/get-started/create-token/",
        api_key: Some(BEARER),
        verification: get("/user/tokens/verify"),
        notes: "API key: an API token (not the legacy global key). An account-owned token verifies at /accounts/{account_id}/tokens/verify instead, so set verification for one.",
        ..P
    },
    // Checked 2026-11-26: docs.datadoghq.com/api/latest/authentication (API key for writes, plus application key for reads;
    // GET /api/v1/validate per site) and .../key-management/validate-api-and-application-keys (/api/v2/validate_keys checks both).
    Provider {
        id: "datadog",
        name: "Datadog",
        base_url: "https://api.datadoghq.com",
        docs: "https://docs.datadoghq.com/account_management/api-app-keys/",
        tenant: Some(
            "site: US1 is api.datadoghq.com; other sites set baseUrl to api.us3.datadoghq.com, api.us5.datadoghq.com, api.datadoghq.eu, api.ap1.datadoghq.com, api.ap2.datadoghq.com, api.uk1.datadoghq.com or api.ddog-gov.com",
        ),
        api_key: Some(header("DD-API-KEY")),
        verification: get("/api/v1/validate"),
        notes: "Writes need the API key; reads also need an application key (DD-APPLICATION-KEY), which one API-key method cannot carry yet. /api/v1/validate checks the API key only (403 when invalid).",
        ..P
    },
    // Checked 2026-11-26 only against secondary sources (logto.io provider explorer, community guides): the three endpoint URLs and a
    // form-encoded token request. Discord's own page (discord.com/developers/docs/topics/oauth2) was not in the searchable corpus,
    // so basic client authentication and the missing PKCE are not confirmed here.
    Provider {
        id: "discord",
        name: "Discord",
        base_url: "https://discord.com/api/v10",
        docs: "https://discord.com/developers/docs/topics/oauth2",
        oauth2: Some(OAuth2 {
            authorization_url: "https://discord.com/oauth2/authorize",
            token_url: "https://discord.com/api/oauth2/token",
            revocation_url: Some("https://discord.com/api/oauth2/token/revoke"),
            scopes: &["identify", "guilds"],
            pkce: false,
            client_auth: ClientAuth::Basic,
            ..OAUTH
        }),
        api_key: Some(ApiKey { prefix: Some("Bot "), ..header("Authorization") }),
        verification: get("/users/@me"),
        notes: "API key: a bot token, sent as `Bot <token>` (/users/@me then names the bot).",
        ..P
    },
    // Checked 2026-11-26: dropbox.tech/developers/using-oauth-2-0-with-offline-access (short-lived tokens, token_access_type=offline
    // for a refresh token); the SDKs implement PKCE. The four-hour lifetime is from Dropbox's migration post.
    // account_id in the token response: from the react-native-app-auth Dropbox example (tokenAdditionalParameters.account_id).
    Provider {
        id: "dropbox",
        name: "Dropbox",
        base_url: "https://api.dropboxapi.com/2",
        docs: "https://developers.dropbox.com/oauth-guide",
        oauth2: Some(OAuth2 {
            authorization_url: "https://www.dropbox.com/oauth2/authorize",
            token_url: "https://api.dropboxapi.com/oauth2/token",
            scopes: &["account_info.read", "files.metadata.read"],
            authorization_params: &[("token_access_type", "offline")],
            token_response_fields: &["account_id"],
            ..OAUTH
        }),
        verification: Some(Verify { method: HttpMethod::POST, path: "/users/get_current_account" }),
        notes: "token_access_type=offline is what yields a refresh token; access tokens last four hours. Revocation is POST /2/auth/token/revoke with the token as bearer (not RFC 7009).",
        ..P
    },
    // Checked 2026-11-26: docs.github.com .../authorizing-oauth-apps (web application flow, /login/oauth/authorize) and
    // github.blog/changelog/2025-07-14-pkce-support-for-oauth-and-github-app-authentication (S256 only, supported, not required).
    // Not confirmed in this pass: the 8-hour GitHub-App token lifetime and the DELETE revocation path (from earlier reading).
    Provider {
        id: "github",
        name: "GitHub",
        base_url: "https://api.github.com",
        docs: "https://docs.github.com/en/apps/oauth-apps/building-oauth-apps/authorizing-oauth-apps",
        oauth2: Some(OAuth2 {
            authorization_url: "https://github.com/login/oauth/authorize",
            token_url: "https://github.com/login/oauth/access_token",
            scopes: &["repo", "read:user"],
            ..OAUTH
        }),
        api_key: Some(BEARER),
        verification: get("/user"),
        notes: "OAuth-app tokens never expire and come without a refresh token (set defaultTokenLifetime long); GitHub-App user tokens last 8 hours with a 6-month refresh token. PKCE (S256) supported since July 2025. The token endpoint answers form-encoded unless asked for JSON. Revocation is DELETE /applications/{client_id}/token (not RFC 7009). API key: a personal access token.",
        ..P
    },
    // Checked 2026-11-26: docs.gitlab.com/api/oauth2/ (authorization code with PKCE recommended for server apps too; /oauth/token,
    // /oauth/revoke, /oauth/userinfo on the instance's host). Not confirmed on an official page: the two-hour access-token lifetime.
    Provider {
        id: "gitlab",
        name: "GitLab",
        base_url: "https://gitlab.com/api/v4",
        docs: "https://docs.gitlab.com/api/oauth2/",
        oauth2: Some(OAuth2 {
            authorization_url: "https://gitlab.com/oauth/authorize",
            token_url: "https://gitlab.com/oauth/token",
            revocation_url: Some("https://gitlab.com/oauth/revoke"),
            scopes: &["read_user", "read_api"],
            ..OAUTH
        }),
        api_key: Some(BEARER),
        verification: get("/user"),
        notes: "gitlab.com; a self-managed GitLab sets baseUrl and the three URLs to its own host. Access tokens last two hours; refresh tokens rotate. API key: a personal, group or project access token.",
        ..P
    },
    // Checked 2026-11-26: developers.google.com/identity/protocols/oauth2/web-server (offline access, refresh tokens, revocation);
    // the endpoint URLs as listed by Google's discovery document (logto.io provider explorer repeats them).
    Provider {
        id: "google",
        name: "Google",
        base_url: "https://www.googleapis.com",
        docs: "https://developers.google.com/identity/protocols/oauth2/web-server",
        oauth2: Some(OAuth2 {
            authorization_url: "https://accounts.google.com/o/oauth2/v2/auth",
            token_url: "https://oauth2.googleapis.com/token",
            revocation_url: Some("https://oauth2.googleapis.com/revoke"),
            scopes: &["openid", "email", "profile"],
            authorization_params: &[("access_type", "offline"), ("prompt", "consent")],
            ..OAUTH
        }),
        verification: get("/oauth2/v3/userinfo"),
        notes: "access_type=offline gives a refresh token, prompt=consent gives one again on re-consent. Access tokens last one hour. Add the API's scopes (e.g. https://www.googleapis.com/auth/drive.readonly).",
        ..P
    },
    // Checked 2026-11-26: developers.hubspot.com api-reference/2026-03/authentication/oauth-tokens/refresh-oauth-token (POST
    // https://api.hubapi.com/oauth/2026-03/token, form body with client_id/client_secret, code_verifier accepted), .../manage-oauth-tokens
    // (30-minute access tokens), .../legacy/.../oauth-tokens/v1/migration-guide (v1 sunset 2027-02-16), auth-oauth-v3/guide
    // (authorize URL). Not confirmed: that the authorize URL takes code_challenge, so PKCE stays off; the 2026-03 revoke path.
    // The reference renders token responses in camelCase even for v1 (whose real answer is snake_case), so it says nothing sure
    // about 2026-03's field names; the migration guide says the OAuth 2.0 behaviour is unchanged.
    Provider {
        id: "hubspot",
        name: "HubSpot",
        base_url: "https://api.hubapi.com",
        docs: "https://developers.hubspot.com/docs/api-reference/2026-03/authentication/manage-oauth-tokens",
        oauth2: Some(OAuth2 {
            authorization_url: "https://app.hubspot.com/oauth/authorize",
            token_url: "https://api.hubapi.com/oauth/2026-03/token",
            scopes: &["oauth", "crm.objects.contacts.read"],
            pkce: false,
            ..OAUTH
        }),
        api_key: Some(BEARER),
        verification: get("/crm/v3/objects/contacts?limit=1"),
        notes: "Client credentials go in the form body (the 2026-03 endpoints take every parameter in the body; the v1 /oauth/v1/token endpoint is retired on 2027-02-16). Access tokens last 30 minutes. Revocation deletes the refresh token through HubSpot's own endpoint (not RFC 7009). API key: a private-app access token.",
        ..P
    },
    // Checked 2026-11-26: developers.intercom.com/building-apps/docs/setting-up-oauth and intercom-developer-hub.readme.io/reference/
    // using-oauth (token POST https://api.intercom.io/auth/eagle/token; permissions on the app); no refresh token and no expiry per
    // Intercom engineering support (community.intercom.com). Not confirmed: the reference names https://app.intercom.io/oauth as the
    // authorization URL; app.intercom.com/oauth is kept from the current guide as read before.
    Provider {
        id: "intercom",
        name: "Intercom",
        base_url: "https://api.intercom.io",
        docs: "https://developers.intercom.com/docs/build-an-integration/learn-more/authentication/setting-up-oauth",
        oauth2: Some(OAuth2 {
            authorization_url: "https://app.intercom.com/oauth",
            token_url: "https://api.intercom.io/auth/eagle/token",
            pkce: false,
            ..OAUTH
        }),
        api_key: Some(BEARER),
        verification: get("/me"),
        notes: "The token request carries code, client_id and client_secret in the body. Access tokens do not expire and no refresh token is issued: set defaultTokenLifetime long. Permissions are set on the app. EU and AU workspaces use api.eu.intercom.io / api.au.intercom.io.",
        ..P
    },
    // Checked 2026-11-26: linear.app/developers/oauth-2-0-authentication (authorize URL, comma-separated scopes, PKCE supported,
    // token at api.linear.app/oauth/token, all apps moved to refresh tokens on 2026-04-01). Not confirmed: the revoke URL's form.
    Provider {
        id: "linear",
        name: "Linear",
        base_url: "https://api.linear.app",
        docs: "https://linear.app/developers/oauth-2-0-authentication",
        oauth2: Some(OAuth2 {
            authorization_url: "https://linear.app/oauth/authorize",
            token_url: "https://api.linear.app/oauth/token",
            revocation_url: Some("https://api.linear.app/oauth/revoke"),
            scopes: &["read"],
            scope_separator: ",",
            ..OAUTH
        }),
        api_key: Some(header("Authorization")),
        notes: "Scopes are comma-separated (read is always granted). Since 2026-04-01 every OAuth app gets short-lived access tokens with a refresh token. The API is GraphQL (POST /graphql), so no verification request. API key: a personal API key sent without a prefix.",
        ..P
    },
    // Checked 2026-11-26: learn.microsoft.com/en-us/linkedin/shared/authentication/programmatic-refresh-tokens (60-day access, 365-day
    // refresh tokens for approved partners) and .../authorization-code-flow-native (PKCE only for native clients, enabled by LinkedIn).
    Provider {
        id: "linkedin",
        name: "LinkedIn",
        base_url: "https://api.linkedin.com/v2",
        docs: "https://learn.microsoft.com/en-us/linkedin/shared/authentication/authorization-code-flow",
        oauth2: Some(OAuth2 {
            authorization_url: "https://www.linkedin.com/oauth/v2/authorization",
            token_url: "https://www.linkedin.com/oauth/v2/accessToken",
            revocation_url: Some("https://www.linkedin.com/oauth/v2/revoke"),
            scopes: &["openid", "profile", "email"],
            pkce: false,
            ..OAUTH
        }),
        verification: get("/userinfo"),
        notes: "Access tokens last 60 days; refresh tokens only for approved partners, valid 365 days from consent (a refresh does not extend them). PKCE is for native clients only.",
        ..P
    },
    // Checked 2026-11-26: mailchimp.com/developer/marketing/guides/access-user-data-oauth-2/ and Mailchimp's "How to Use OAuth2"
    // (authorize, token and metadata URLs; tokens do not expire). Not confirmed: an API key accepted as a Bearer token.
    Provider {
        id: "mailchimp",
        name: "Mailchimp",
        base_url: "https://{dc}.api.mailchimp.com/3.0",
        docs: "https://mailchimp.com/developer/marketing/guides/access-user-data-oauth-2/",
        tenant: Some(
            "dc: the account's data centre, from GET https://login.mailchimp.com/oauth2/metadata after consent (or the API key's suffix)",
        ),
        oauth2: Some(OAuth2 {
            authorization_url: "https://login.mailchimp.com/oauth2/authorize",
            token_url: "https://login.mailchimp.com/oauth2/token",
            pkce: false,
            ..OAUTH
        }),
        api_key: Some(BEARER),
        verification: get("/ping"),
        notes: "Access tokens do not expire; no refresh token. Mailchimp documents API keys with HTTP basic (any username, the key as password); sending one as Bearer is not confirmed.",
        ..P
    },
    // Checked 2026-11-26: documentation.mailgun.com/docs/mailgun/api-reference/authentication/ (basic api:<key>; primary account key
    // vs domain sending keys) and the API overview (US and EU base URLs). Not confirmed in this pass: GET /v3/domains itself.
    Provider {
        id: "mailgun",
        name: "Mailgun",
        base_url: "https://api.mailgun.net/v3",
        docs: "https://documentation.mailgun.com/docs/mailgun/api-reference/authentication",
        basic: true,
        verification: get("/domains"),
        notes: "Basic: username `api`, password the primary account API key (a domain sending key may only send messages, so the verification request refuses it). EU domains use https://api.eu.mailgun.net/v3.",
        ..P
    },
    // Checked 2026-11-26: learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow (auth code with PKCE recommended,
    // /{tenant}/oauth2/v2.0/authorize and /token, `common` for multi-tenant apps). No RFC 7009 endpoint is documented.
    Provider {
        id: "microsoft",
        name: "Microsoft (Graph)",
        base_url: "https://graph.microsoft.com/v1.0",
        docs: "https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-auth-code-flow",
        oauth2: Some(OAuth2 {
            authorization_url: "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
            token_url: "https://login.microsoftonline.com/common/oauth2/v2.0/token",
            scopes: &["offline_access", "User.Read"],
            ..OAUTH
        }),
        verification: get("/me"),
        notes: "`common` admits work and personal accounts; a single-tenant app puts its tenant id there. offline_access gives a refresh token. No RFC 7009 revocation endpoint.",
        ..P
    },
    // Checked 2026-11-26: developer.monday.com/apps/docs/oauth (authorize URL; the access token is valid until the user uninstalls the
    // app). Not confirmed in this pass: the token URL (from earlier reading) and PKCE, which monday documents nowhere seen.
    Provider {
        id: "monday",
        name: "monday.com",
        base_url: "https://api.monday.com/v2",
        docs: "https://developer.monday.com/apps/docs/oauth",
        oauth2: Some(OAuth2 {
            authorization_url: "https://auth.monday.com/oauth2/authorize",
            token_url: "https://auth.monday.com/oauth2/token",
            pkce: false,
            ..OAUTH
        }),
        api_key: Some(header("Authorization")),
        notes: "Access tokens do not expire; no refresh token. GraphQL API (POST), so no verification request. API key: a personal API token sent without a prefix.",
        ..P
    },
    // Checked 2026-11-26: developers.notion.com/reference/create-a-token and /reference/refresh-a-token (POST /v1/oauth/token, basic
    // authentication, refresh_token in the answer). Not confirmed: that the token endpoint takes a form body (Notion documents JSON),
    // and whether /v1/oauth/revoke follows RFC 7009, so no revocationUrl.
    // Token-response fields bot_id, workspace_id, workspace_name as listed in the create-a-token response.
    Provider {
        id: "notion",
        name: "Notion",
        base_url: "https://api.notion.com/v1",
        docs: "https://developers.notion.com/guides/get-started/authorization",
        oauth2: Some(OAuth2 {
            authorization_url: "https://api.notion.com/v1/oauth/authorize",
            token_url: "https://api.notion.com/v1/oauth/token",
            pkce: false,
            client_auth: ClientAuth::Basic,
            authorization_params: &[("owner", "user")],
            token_response_fields: &["workspace_id", "workspace_name", "bot_id"],
            ..OAUTH
        }),
        api_key: Some(BEARER),
        notes: "The token endpoint takes HTTP basic client authentication and now answers with a refresh token (refreshing returns a new refresh token too). Every request needs a Notion-Version header, so no verification request. API key: an internal integration secret.",
        ..P
    },
    // Checked 2026-11-26 against mirrors of the API reference only (Authorization: Bearer, GET https://api.openai.com/v1/models);
    // platform.openai.com itself was not in the corpus.
    Provider {
        id: "openai",
        name: "OpenAI",
        base_url: "https://api.openai.com/v1",
        docs: "https://platform.openai.com/docs/api-reference/authentication",
        api_key: Some(BEARER),
        verification: get("/models"),
        ..P
    },
    // Checked 2026-11-26 against secondary sources only (the Token token= header and Accept header as shown in PagerDuty examples);
    // developer.pagerduty.com's page itself was not in the corpus. Not confirmed: the EU host and the /abilities request.
    Provider {
        id: "pagerduty",
        name: "PagerDuty",
        base_url: "https://api.pagerduty.com",
        docs: "https://developer.pagerduty.com/docs/authentication",
        api_key: Some(ApiKey { prefix: Some("Token token="), ..header("Authorization") }),
        verification: get("/abilities"),
        notes: "API key: a REST API key, sent as `Authorization: Token token=<key>` (OAuth tokens go as Bearer instead). Requests should send Accept: application/vnd.pagerduty+json;version=2. EU accounts use api.eu.pagerduty.com.",
        ..P
    },
    // Checked 2026-11-26: pipedrive.readme.io/docs/marketplace-oauth-authorization and developers.pipedrive.com/docs/api/v1/Oauth
    // (authorize URL; /oauth/token with basic client authentication; expiring access tokens with refresh tokens) and
    // developers.pipedrive.com/changelog/post/new-parameter-in-oauth-oauthtoken-responses (api_domain in every /oauth/token
    // response, refreshes included). Not confirmed in this pass: the revoke URL (from earlier reading).
    Provider {
        id: "pipedrive",
        name: "Pipedrive",
        base_url: "https://api.pipedrive.com/v1",
        docs: "https://pipedrive.readme.io/docs/marketplace-oauth-authorization",
        oauth2: Some(OAuth2 {
            authorization_url: "https://oauth.pipedrive.com/oauth/authorize",
            token_url: "https://oauth.pipedrive.com/oauth/token",
            revocation_url: Some("https://oauth.pipedrive.com/oauth/revoke"),
            pkce: false,
            client_auth: ClientAuth::Basic,
            token_response_fields: &["api_domain"],
            ..OAUTH
        }),
        api_key: Some(ApiKey { location: ApiKeyLocation::Query, name: "api_token", prefix: None }),
        verification: get("/users/me"),
        notes: "Every token response (refreshes too) carries api_domain, the company's own host (e.g. https://acme.pipedrive.com) that OAuth calls should use; it is kept for Jobs as token_response.api_domain. Access tokens last about an hour. Scopes are set on the app.",
        ..P
    },
    // Checked 2026-11-26: postmarkapp.com/developer/user-guide/managing-your-account (X-Postmark-Server-Token for server endpoints,
    // X-Postmark-Account-Token for account ones, 401 on a bad token) and the server API reference (GET /server with a server token).
    Provider {
        id: "postmark",
        name: "Postmark",
        base_url: "https://api.postmarkapp.com",
        docs: "https://postmarkapp.com/developer/api/overview#authentication",
        api_key: Some(header("X-Postmark-Server-Token")),
        verification: get("/server"),
        notes: "API key: a server token (account-level calls use X-Postmark-Account-Token instead).",
        ..P
    },
    // Checked 2026-11-26: developer.intuit.com .../oauth-openid-discovery-doc (authorization and token endpoints as listed above, from
    // https://developer.api.intuit.com/.well-known/openid_configuration) and .../oauth-2.0 (realmID). Not confirmed in this pass: the
    // revocation endpoint, token lifetimes and basic client authentication (from earlier reading of the same pages).
    Provider {
        id: "quickbooks",
        name: "QuickBooks Online",
        base_url: "https://quickbooks.api.intuit.com/v3",
        docs: "https://developer.intuit.com/app/developer/qbo/docs/develop/authentication-and-authorization/oauth-2.0",
        tenant: Some("realmId: the company id, a query parameter of the OAuth callback; APIs live under /v3/company/{realmId}"),
        oauth2: Some(OAuth2 {
            authorization_url: "https://appcenter.intuit.com/connect/oauth2",
            token_url: "https://oauth.platform.intuit.com/oauth2/v1/tokens/bearer",
            revocation_url: Some("https://developer.api.intuit.com/v2/oauth2/tokens/revoke"),
            scopes: &["com.intuit.quickbooks.accounting"],
            pkce: false,
            client_auth: ClientAuth::Basic,
            ..OAUTH
        }),
        notes: "Access tokens last one hour, refresh tokens 100 days and rotate. Sandbox companies use sandbox-quickbooks.api.intuit.com. No verification request (it needs the realmId).",
        ..P
    },
    // Checked 2026-11-26: help.salesforce.com remoteaccess_oauth_web_server_flow (web server flow = authorization code; PKCE
    // recommended with code_challenge/code_verifier). Not confirmed in this pass: the revoke URL and the absent expires_in.
    Provider {
        id: "salesforce",
        name: "Salesforce",
        base_url: "{instance_url}/services/data/v62.0",
        docs: "https://help.salesforce.com/HTViewHelpDoc?id=remoteaccess_oauth_web_server_flow.htm&language=en_US",
        tenant: Some("instance_url: the org's My Domain, a field of the token response"),
        instance_parameters: &[Param { name: "instance_url", from: ParameterSource::TokenResponse, part: ParameterPart::Url, label: None }],
        allowed_hosts: &["*.my.salesforce.com"],
        oauth2: Some(OAuth2 {
            authorization_url: "https://login.salesforce.com/services/oauth2/authorize",
            token_url: "https://login.salesforce.com/services/oauth2/token",
            revocation_url: Some("https://login.salesforce.com/services/oauth2/revoke"),
            scopes: &["api", "refresh_token"],
            token_response_fields: &["instance_url"],
            ..OAUTH
        }),
        verification: get("/limits"),
        notes: "The token response has no expires_in (session timeout set by the org): defaultTokenLifetime applies. Sandboxes use test.salesforce.com. The base URL comes from the token response's instance_url, which must be under *.my.salesforce.com (every org has a My Domain there).",
        ..P
    },
    // Checked 2026-11-26: twilio.com/docs/sendgrid/api-reference/how-to-use-the-sendgrid-v3-api/authentication (Authorization: Bearer)
    // and .../api-key-permissions/retrieve-a-list-of-scopes-for-which-this-user-has-access (GET /v3/scopes, EU base URL).
    Provider {
        id: "sendgrid",
        name: "SendGrid",
        base_url: "https://api.sendgrid.com",
        docs: "https://www.twilio.com/docs/sendgrid/api-reference/how-to-use-the-sendgrid-v3-api/authentication",
        api_key: Some(BEARER),
        verification: get("/v3/scopes"),
        notes: "EU regional subusers use https://api.eu.sendgrid.com.",
        ..P
    },
    // Checked 2026-11-26: shopify.dev/docs/apps/build/authentication-authorization/authenticate-standalone-apps (authorization code
    // grant), shopify.dev/changelog/offline-access-tokens-now-support-expiry-and-refresh and .../use-expiring-offline-access-tokens
    // (60-minute offline tokens with rotating refresh tokens; required for public apps from 2027-01-01). The expiring=1 token
    // parameter is from Shopify's own PHP library (Shopify/shopify-app-php issue 12), not a documentation page. API version
    // 2026-07: the latest stable one in shopify.dev/changelog/release-notes (2026-10 was the release candidate); versions are
    // supported for at least 12 months and an unsupported one falls forward to the oldest supported. OAuth endpoints are unversioned.
    Provider {
        id: "shopify",
        name: "Shopify",
        base_url: "https://{shop}.myshopify.com/admin/api/2026-07",
        docs: "https://shopify.dev/docs/apps/build/authentication-authorization/authenticate-standalone-apps",
        tenant: Some("shop: the store's myshopify.com subdomain, asked of the user; authorization and token URLs are per shop too"),
        instance_parameters: &[asked("shop", "Shop name (the part before .myshopify.com)")],
        allowed_hosts: &["*.myshopify.com"],
        oauth2: Some(OAuth2 {
            authorization_url: "https://{shop}.myshopify.com/admin/oauth/authorize",
            token_url: "https://{shop}.myshopify.com/admin/oauth/access_token",
            scopes: &["read_products", "read_orders"],
            scope_separator: ",",
            pkce: false,
            token_params: &[("expiring", "1")],
            ..OAUTH
        }),
        api_key: Some(header("X-Shopify-Access-Token")),
        verification: get("/shop.json"),
        notes: "Scopes are comma-separated. Offline tokens expire after one hour, with a refresh token that is replaced on every use, because the token requests carry expiring=1 (tokenParams); public apps must use expiring tokens (non-expiring ones are refused from 2027-01-01); a custom app that wants a non-expiring token sets tokenParams expiring: \"0\". API key: a custom app's Admin API access token. The connect page asks for the shop; every address must stay under *.myshopify.com.",
        ..P
    },
    // Checked 2026-11-26: docs.slack.dev/reference/methods/oauth.v2.access (basic auth preferred over body parameters; code_verifier
    // accepted), docs.slack.dev/authentication/using-token-rotation (12-hour tokens), docs.slack.dev/authentication/using-pkce and
    // docs.slack.dev/changelog/2026/03/30/pkce (PKCE is for public clients). The 200-with-ok:false behaviour is from earlier reading.
    // Token-response fields team and authed_user (the installing user, and the user token when user scopes were asked): from Slack's
    // oauth.v2.access response as read before; the response body was not in this pass's excerpt.
    Provider {
        id: "slack",
        name: "Slack",
        base_url: "https://slack.com/api",
        docs: "https://docs.slack.dev/reference/methods/oauth.v2.access",
        oauth2: Some(OAuth2 {
            authorization_url: "https://slack.com/oauth/v2/authorize",
            token_url: "https://slack.com/api/oauth.v2.access",
            scopes: &["channels:read", "chat:write"],
            scope_separator: ",",
            pkce: false,
            client_auth: ClientAuth::Basic,
            token_response_fields: &["team", "authed_user"],
            ..OAUTH
        }),
        api_key: Some(BEARER),
        verification: get("/auth.test"),
        notes: "Bot scopes, comma-separated; user scopes go in authorizationParams.user_scope and the user token comes back under authed_user. Slack asks for the client id and secret by HTTP basic. Tokens do not expire unless token rotation is on (then 12 hours with a refresh token). PKCE stays off: enabling it in Slack marks the app a public client, for good, and its refresh tokens then expire after 30 days. Web API errors answer 200 with ok:false, so the verification request passes a bad token: check ok in Jobs. Revocation is auth.revoke (not RFC 7009).",
        ..P
    },
    // Checked 2026-11-26 against tutorials that follow developer.spotify.com/documentation/web-api/tutorials/code-flow (authorize and
    // token URLs, basic client authentication) and .../code-pkce-flow. Spotify's own page was not in the corpus.
    Provider {
        id: "spotify",
        name: "Spotify",
        base_url: "https://api.spotify.com/v1",
        docs: "https://developer.spotify.com/documentation/web-api/tutorials/code-flow",
        oauth2: Some(OAuth2 {
            authorization_url: "https://accounts.spotify.com/authorize",
            token_url: "https://accounts.spotify.com/api/token",
            scopes: &["user-read-email"],
            client_auth: ClientAuth::Basic,
            ..OAUTH
        }),
        verification: get("/me"),
        notes: "Access tokens last one hour.",
        ..P
    },
    // Checked 2026-11-26: docs.stripe.com/api/authentication (basic with the key as username and no password, or Bearer; sk_ and
    // restricted rk_ keys, restricted keys recommended in live mode).
    Provider {
        id: "stripe",
        name: "Stripe",
        base_url: "https://api.stripe.com",
        docs: "https://docs.stripe.com/api/authentication",
        api_key: Some(BEARER),
        basic: true,
        verification: get("/v1/balance"),
        notes: "API key: a secret or restricted key (sk_/rk_). Basic: the key as username, empty password.",
        ..P
    },
    // Checked 2026-11-26: twilio.com/docs/usage/requests-to-twilio (HTTP basic; API key + secret recommended, Account SID + Auth
    // Token for local testing; regional credentials). Not confirmed: that GET /Accounts.json answers 200 for an API key.
    Provider {
        id: "twilio",
        name: "Twilio",
        base_url: "https://api.twilio.com/2010-04-01",
        docs: "https://www.twilio.com/docs/usage/requests-to-twilio",
        basic: true,
        verification: get("/Accounts.json"),
        notes: "Basic: username an API key SID and password its secret (Twilio's recommendation), or the Account SID and Auth Token (for local testing). Credentials are per Twilio Region.",
        ..P
    },
    // Checked 2026-11-26: docs.x.com/fundamentals/authentication/oauth-2-0/user-access-token and .../authorization-code (confidential
    // clients use basic authentication at the token endpoint; two-hour tokens; offline.access for a refresh token; token URL).
    // Not confirmed in this pass: the revoke URL.
    Provider {
        id: "x",
        name: "X (Twitter)",
        base_url: "https://api.x.com/2",
        docs: "https://docs.x.com/fundamentals/authentication/oauth-2-0/user-access-token",
        oauth2: Some(OAuth2 {
            authorization_url: "https://x.com/i/oauth2/authorize",
            token_url: "https://api.x.com/2/oauth2/token",
            revocation_url: Some("https://api.x.com/2/oauth2/revoke"),
            scopes: &["tweet.read", "users.read", "offline.access"],
            client_auth: ClientAuth::Basic,
            ..OAUTH
        }),
        verification: get("/users/me"),
        notes: "PKCE is required; offline.access gives a refresh token. Access tokens last two hours.",
        ..P
    },
    // Checked 2026-11-26: developer.xero.com/faq/oauth2 (30-minute access tokens, refresh tokens expire after 60 days unused),
    // developer.xero.com/documentation/oauth2/pkce-flow (authorize URL, PKCE S256), /connections and the Xero-tenant-id header.
    // Not confirmed in this pass: the revocation URL and basic authentication at the token endpoint (from earlier reading).
    Provider {
        id: "xero",
        name: "Xero",
        base_url: "https://api.xero.com",
        docs: "https://developer.xero.com/documentation/guides/oauth2/auth-flow",
        tenant: Some("Xero-tenant-id: a header naming the organisation, from GET https://api.xero.com/connections"),
        oauth2: Some(OAuth2 {
            authorization_url: "https://login.xero.com/identity/connect/authorize",
            token_url: "https://identity.xero.com/connect/token",
            revocation_url: Some("https://identity.xero.com/connect/revocation"),
            scopes: &["openid", "profile", "email", "offline_access", "accounting.transactions"],
            client_auth: ClientAuth::Basic,
            ..OAUTH
        }),
        verification: get("/connections"),
        notes: "Access tokens last 30 minutes; refresh tokens rotate and expire after 60 days unused. The accounting API is under /api.xro/2.0.",
        ..P
    },
    // Checked 2026-11-26: developer.zendesk.com/api-reference/ticketing/oauth/grant_type_tokens/ (authorization_code and refresh_token
    // grants at /oauth/tokens, PKCE with code_challenge/code_verifier) and .../documentation/api-basics/authentication/refresh-token.
    // Not confirmed in this pass: the /oauth/authorizations/new path (from earlier reading) and the access-token lifetime.
    Provider {
        id: "zendesk",
        name: "Zendesk",
        base_url: "https://{subdomain}.zendesk.com/api/v2",
        docs: "https://developer.zendesk.com/api-reference/ticketing/oauth/grant_type_tokens/",
        tenant: Some(
            "subdomain: the account's zendesk.com subdomain, asked of the user; authorization and token URLs are per subdomain too",
        ),
        instance_parameters: &[asked("subdomain", "Zendesk subdomain (the part before .zendesk.com)")],
        allowed_hosts: &["*.zendesk.com"],
        oauth2: Some(OAuth2 {
            authorization_url: "https://{subdomain}.zendesk.com/oauth/authorizations/new",
            token_url: "https://{subdomain}.zendesk.com/oauth/tokens",
            scopes: &["read"],
            ..OAUTH
        }),
        basic: true,
        verification: get("/users/me.json"),
        notes: "OAuth access tokens expire and come with a refresh token (refresh_token grant at /oauth/tokens). Basic: username `{email}/token`, password an API token. The connect page asks for the subdomain; every address must stay under *.zendesk.com.",
        ..P
    },
    // Checked 2026-11-26: developers.zoom.us/docs/integrations/oauth/ and /docs/rooms/oauth/ (POST https://zoom.us/oauth/token with
    // basic authentication; tokens can be requested, refreshed and revoked). PKCE and the one-hour lifetime from Zoom's own samples.
    Provider {
        id: "zoom",
        name: "Zoom",
        base_url: "https://api.zoom.us/v2",
        docs: "https://developers.zoom.us/docs/integrations/oauth/",
        oauth2: Some(OAuth2 {
            authorization_url: "https://zoom.us/oauth/authorize",
            token_url: "https://zoom.us/oauth/token",
            revocation_url: Some("https://zoom.us/oauth/revoke"),
            client_auth: ClientAuth::Basic,
            ..OAUTH
        }),
        verification: get("/users/me"),
        notes: "Scopes are set on the app. Access tokens last one hour; refresh tokens rotate.",
        ..P
    },
];
