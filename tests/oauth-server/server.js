// A real OAuth2 authorization server for Latchkey's tests: oidc-provider (panva) with an unbounded store, short
// token lifetimes from the environment, an auto-approving or password-form consent step, and a /_test API
// that exposes the server's own records. Loopback only. See README.md for the environment variables.
//
// On start it prints one JSON line on stdout: {"issuer":"http://127.0.0.1:PORT","port":PORT,...endpoints}.

import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import * as querystring from 'node:querystring';

import Provider from 'oidc-provider';

import { createStore } from './adapter.js';
import { interactionHandler } from './interaction.js';
import { createRecords, fingerprint } from './records.js';

// ---------------------------------------------------------------------------------------------------------------
// Configuration

// oidc-provider prints notices with console.info: keep stdout for the one ready line.
console.info = console.error;
console.log = console.error;

const env = process.env;
const escapeHtml = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const seconds = (name, fallback) => {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${name} must be a positive whole number of seconds, got ${raw}`);
  return n;
};
const flag = (name, fallback) => {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  return !['0', 'false', 'no', 'off'].includes(raw.toLowerCase());
};

const ACCESS_TTL = seconds('OAUTH_ACCESS_TTL', 3600);

const config = {
  port: Number(env.PORT ?? 0),
  accessTtl: ACCESS_TTL,
  clientCredentialsTtl: seconds('OAUTH_CLIENT_CREDENTIALS_TTL', ACCESS_TTL),
  refreshTtl: seconds('OAUTH_REFRESH_TTL', 86400),
  codeTtl: seconds('OAUTH_CODE_TTL', 60),
  retention: seconds('OAUTH_EXPIRED_RETENTION', 3600),
  rotateRefreshToken: flag('OAUTH_ROTATE_REFRESH_TOKEN', true),
  pkceRequired: flag('OAUTH_PKCE_REQUIRED', true),
  scopes: (env.OAUTH_SCOPES ?? 'openid offline_access read write').split(/\s+/).filter(Boolean),
  autoApprove: env.OAUTH_AUTO_APPROVE === 'deny' ? 'deny' : flag('OAUTH_AUTO_APPROVE', false),
  autoApproveUser: env.OAUTH_AUTO_APPROVE_USER || 'test-user',
  password: env.OAUTH_PASSWORD || 'test-password',
  strictClientAuth: flag('OAUTH_STRICT_CLIENT_AUTH', true),
  quirks: {
    omit_expires_in: flag('OAUTH_OMIT_EXPIRES_IN', false),
    refresh_omits_refresh_token: flag('OAUTH_REFRESH_OMITS_REFRESH_TOKEN', false),
    // Non-standard fields added to every successful token response (Salesforce's instance_url, Slack's team);
    // "{issuer}" in a string value becomes this server's issuer URL.
    extra_token_fields: JSON.parse(env.OAUTH_EXTRA_TOKEN_FIELDS || '{}'),
  },
};

const clientAuthMethods = new Map(); // client_id -> registered token_endpoint_auth_method

function normalizeClient(raw) {
  if (!raw || typeof raw.client_id !== 'string' || !raw.client_id) {
    throw new Error(`a client needs a client_id: ${JSON.stringify(raw)}`);
  }
  const grantTypes = raw.grant_types ?? ['authorization_code', 'refresh_token'];
  const codeFlow = grantTypes.includes('authorization_code');
  const client = {
    token_endpoint_auth_method: 'client_secret_basic',
    response_types: codeFlow ? ['code'] : [],
    redirect_uris: [],
    ...raw,
    grant_types: grantTypes,
  };
  clientAuthMethods.set(client.client_id, client.token_endpoint_auth_method);
  return client;
}

function loadClients() {
  let raw;
  if (env.OAUTH_CLIENTS_FILE) raw = JSON.parse(readFileSync(env.OAUTH_CLIENTS_FILE, 'utf8'));
  else if (env.OAUTH_CLIENTS) raw = JSON.parse(env.OAUTH_CLIENTS);
  else {
    raw = [{
      client_id: 'test-client',
      client_secret: 'test-secret',
      redirect_uris: ['http://127.0.0.1:8080/oauth/callback'],
      grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
    }];
  }
  return (Array.isArray(raw) ? raw : [raw]).map(normalizeClient);
}

// ---------------------------------------------------------------------------------------------------------------
// Provider

const records = createRecords();
const store = createStore({ retentionSeconds: config.retention, observer: records.observer });
const faults = [];

function signingKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256', kid: 'test-key' };
}

function createProvider(issuer, clients) {
  return new Provider(issuer, {
    adapter: store.Adapter,
    clients,
    jwks: { keys: [signingKey()] },
    cookies: { keys: ['latchkey-test-oauth-server-cookie-key'] },
    clockTolerance: 0,
    scopes: config.scopes,
    responseTypes: ['code', 'none'],
    pkce: { required: () => config.pkceRequired },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true, allowedPolicy: async () => true },
      revocation: {
        enabled: true,
        allowedPolicy: async (_ctx, client, token) => token.clientId === client.clientId,
      },
      resourceIndicators: { enabled: false },
    },
    // Plain OAuth2 clients get a refresh token whenever they may use the grant, not only for `offline_access`,
    // and their tokens do not end with the (cookie) session.
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    rotateRefreshToken: () => config.rotateRefreshToken,
    expiresWithSession: async () => false,
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = `<!doctype html><html><body><h1>${escapeHtml(out.error)}</h1>`
        + `<p>${escapeHtml(out.error_description)}</p></body></html>\n`;
    },
    findAccount: async (_ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
    ttl: {
      AccessToken: config.accessTtl,
      ClientCredentials: config.clientCredentialsTtl,
      RefreshToken: config.refreshTtl,
      AuthorizationCode: config.codeTtl,
      IdToken: 3600,
      Interaction: 3600,
      Session: 14 * 24 * 3600,
      Grant: 10 * 365 * 24 * 3600,
    },
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Recording middleware: runs around every provider request, applies armed faults and quirks, and writes the
// records the tests read.

async function readRaw(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

function basicClientId(header) {
  if (!header?.startsWith('Basic ')) return undefined;
  const decoded = Buffer.from(header.slice(6), 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  return colon < 0 ? undefined : decodeURIComponent(decoded.slice(0, colon).replace(/\+/g, ' '));
}

function clientAuthUsed(headers, params) {
  if (headers.authorization?.startsWith('Basic ')) return 'client_secret_basic';
  if (params?.client_secret !== undefined) return 'client_secret_post';
  return 'none';
}

function takeFault(endpoint, params) {
  const index = faults.findIndex((f) => f.endpoint === endpoint
    && (!f.grant_type || f.grant_type === params?.grant_type));
  if (index < 0) return undefined;
  const fault = faults[index];
  fault.remaining -= 1;
  if (fault.remaining <= 0) faults.splice(index, 1);
  return { ...fault, description: 'injected by /_test/faults', outcome: 'injected' };
}

// oidc-provider accepts client_secret_basic and client_secret_post interchangeably; real providers often do
// not, so (unless OAUTH_STRICT_CLIENT_AUTH=0) a client must use the method it is registered with.
const SECRET_METHODS = new Set(['client_secret_basic', 'client_secret_post']);

function clientAuthMismatch(ctx, params) {
  if (!config.strictClientAuth) return undefined;
  const used = clientAuthUsed(ctx.headers, params);
  const clientId = basicClientId(ctx.get('authorization')) ?? params.client_id;
  const registered = clientAuthMethods.get(clientId);
  if (!SECRET_METHODS.has(used) || !SECRET_METHODS.has(registered) || used === registered) return undefined;
  return {
    status: 401,
    error: 'invalid_client',
    description: `client ${clientId} is registered for ${registered}, the request used ${used}`,
    outcome: 'error',
  };
}

const ENDPOINTS = { token: 'token', revocation: 'revocation', introspection: 'introspection' };

// Form parameters of a token request beyond the standard (and secret) ones, as sent: what a client's
// connector-specific `tokenParams` (e.g. `audience`) look like on the wire.
const STANDARD_TOKEN_PARAMS = new Set(['grant_type', 'code', 'redirect_uri', 'code_verifier', 'refresh_token', 'client_id',
  'client_secret', 'scope', 'client_assertion', 'client_assertion_type']);

function extraParams(params) {
  const out = Object.fromEntries(Object.entries(params).filter(([key]) => !STANDARD_TOKEN_PARAMS.has(key)));
  return Object.keys(out).length ? out : undefined;
}

function redirectSummary(location) {
  if (!location) return undefined;
  try {
    const url = new URL(location, 'http://placeholder');
    return {
      to: url.origin === 'http://placeholder' ? url.pathname : `${url.origin}${url.pathname}`,
      code_issued: url.searchParams.has('code'),
      state_returned: url.searchParams.has('state'),
      error: url.searchParams.get('error') ?? undefined,
    };
  } catch {
    return { to: 'unparsable' };
  }
}

function recordingMiddleware(routes) {
  const byPath = new Map(Object.entries(ENDPOINTS).map(([name, endpoint]) => [routes[name], endpoint]));

  return async function record(ctx, next) {
    const started = Date.now();
    const endpoint = ctx.method === 'POST' ? byPath.get(ctx.path) : undefined;

    if (endpoint) {
      // Read the form here so that faults and the client-auth check can see it; oidc-provider then parses the
      // already-read body from req.body.
      const raw = await readRaw(ctx.req);
      ctx.req.body = raw;
      const params = querystring.parse(raw);
      ctx.state.extraParams = extraParams(params);
      const refused = takeFault(endpoint, params) ?? clientAuthMismatch(ctx, params);
      if (refused) {
        if (refused.delay_ms) await new Promise((resolve) => { setTimeout(resolve, refused.delay_ms); });
        ctx.status = refused.status;
        ctx.set('cache-control', 'no-store');
        if (refused.status === 401) ctx.set('www-authenticate', 'Basic realm="test-oauth-server"');
        ctx.body = { error: refused.error, error_description: refused.description };
        records.event({
          endpoint,
          grant_type: params.grant_type,
          client_id: basicClientId(ctx.get('authorization')) ?? params.client_id,
          client_auth: clientAuthUsed(ctx.headers, params),
          status: refused.status,
          outcome: refused.outcome,
          error: refused.error,
          error_description: refused.description,
          refresh_token: params.grant_type === 'refresh_token'
            ? records.presented(params.refresh_token, { count: false, at: started }) : undefined,
          token: endpoint === 'token' ? undefined : records.presented(params.token, { count: false, at: started }),
          started_ms: started,
        });
        return;
      }
    }

    await next();

    const oidc = ctx.oidc;
    const route = oidc?.route;
    const params = oidc?.params ?? {};
    const body = ctx.body && typeof ctx.body === 'object' && !Buffer.isBuffer(ctx.body) ? ctx.body : {};
    const ok = ctx.status >= 200 && ctx.status < 400 && !body.error;
    const common = {
      status: ctx.status,
      outcome: ok ? 'ok' : 'error',
      error: body.error,
      error_description: body.error_description,
      error_detail: ctx.state.errorDetail,
      started_ms: started,
    };
    const clientId = oidc?.client?.clientId ?? params.client_id ?? basicClientId(ctx.get('authorization'));

    if (route === 'token') {
      if (ok && config.quirks.omit_expires_in) delete body.expires_in;
      if (ok) {
        for (const [name, value] of Object.entries(config.quirks.extra_token_fields ?? {})) {
          body[name] = typeof value === 'string' ? value.replaceAll('{issuer}', serverIssuer) : value;
        }
      }
      if (ok && params.grant_type === 'refresh_token' && config.quirks.refresh_omits_refresh_token) {
        delete body.refresh_token;
      }
      const presented = params.grant_type === 'refresh_token'
        ? records.presented(params.refresh_token, { count: true, at: started }) : undefined;
      const issued = ok ? {
        access_token: fingerprint(body.access_token),
        refresh_token: fingerprint(body.refresh_token),
        expires_in: body.expires_in,
        token_type: body.token_type,
        scope: body.scope,
      } : undefined;
      records.event({
        endpoint: 'token',
        path: ctx.req.aliasPath ?? ctx.path,
        extra_params: ctx.state.extraParams,
        grant_type: params.grant_type,
        client_id: clientId,
        client_auth: clientAuthUsed(ctx.headers, params),
        account_id: oidc?.entities?.Account?.accountId,
        ...common,
        pkce: params.grant_type === 'authorization_code' ? Boolean(params.code_verifier) : undefined,
        refresh_token: presented,
        rotated: presented && issued ? issued.refresh_token !== presented.fingerprint : undefined,
        issued,
      });
    } else if (route === 'revocation') {
      const token = records.presented(params.token, { count: false, at: started });
      const entry = {
        endpoint: 'revocation',
        client_id: clientId,
        client_auth: clientAuthUsed(ctx.headers, params),
        token_type_hint: params.token_type_hint,
        token,
        ...common,
      };
      records.event(entry);
      records.revocation(entry);
    } else if (route === 'introspection') {
      records.event({
        endpoint: 'introspection',
        client_id: clientId,
        token: records.presented(params.token, { count: false, at: started }),
        active: body.active,
        ...common,
      });
    } else if (route === 'authorization' || route === 'resume') {
      const redirect = redirectSummary(ctx.response.get('location'));
      records.event({
        endpoint: route === 'authorization' ? 'authorization' : 'authorization_resume',
        client_id: clientId,
        response_type: params.response_type,
        scope: params.scope,
        redirect_uri: params.redirect_uri,
        state_present: params.state !== undefined,
        code_challenge_method: params.code_challenge_method,
        login_hint: params.login_hint,
        ...common,
        outcome: ok && !redirect?.error ? 'ok' : 'error',
        error: common.error ?? redirect?.error,
        redirect,
      });
    }
  };
}

// ---------------------------------------------------------------------------------------------------------------
// A protected resource: GET /api/me with `Authorization: Bearer <access token>`. Tests point verification
// requests here and assert from the records that no request carried an expired token.

async function resource(provider, req, res) {
  const started = Date.now();
  const header = req.headers.authorization ?? '';
  const value = header.startsWith('Bearer ') ? header.slice(7).trim() : undefined;
  const fault = takeFault('resource', {});
  const reply = (status, body, extra) => {
    records.event({
      endpoint: 'resource',
      access_token: records.presented(value, { count: true, at: started }),
      status,
      outcome: status === 200 ? 'ok' : (fault ? 'injected' : 'error'),
      error: body.error,
      started_ms: started,
      ...extra,
    });
    json(res, status, body, status === 401 ? { 'www-authenticate': `Bearer error="${body.error}"` } : {});
  };
  if (fault) {
    if (fault.delay_ms) await new Promise((resolve) => { setTimeout(resolve, fault.delay_ms); });
    return reply(fault.status, { error: fault.error });
  }
  if (!value) return reply(401, { error: 'invalid_request' });
  const token = (await provider.AccessToken.find(value)) ?? (await provider.ClientCredentials.find(value));
  if (!token) return reply(401, { error: 'invalid_token' });
  return reply(200, { sub: token.accountId, client_id: token.clientId, scope: token.scope }, {
    client_id: token.clientId,
  });
}

// ---------------------------------------------------------------------------------------------------------------
// The /_test API

function json(res, status, body, headers = {}) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers });
  res.end(`${JSON.stringify(body)}\n`);
}

function filterEvents(list, search) {
  let out = list;
  for (const [key, value] of search) {
    if (key === 'since') out = out.filter((e) => e.seq > Number(value));
    else out = out.filter((e) => String(e[key]) === value);
  }
  return out;
}

async function revokeGrants(provider, { account_id: accountId, client_id: clientId }) {
  const grantIds = new Set();
  for (const token of Object.values(records.tokens())) {
    if (token.grant_id && (accountId === undefined || token.account_id === accountId)
      && (clientId === undefined || token.client_id === clientId)) grantIds.add(token.grant_id);
  }
  for (const grantId of grantIds) {
    await new store.Adapter('RefreshToken').revokeByGrantId(grantId);
    await provider.Grant.adapter.destroy(grantId);
  }
  return grantIds.size;
}

async function testApi(provider, req, res, url) {
  const path = url.pathname.slice('/_test'.length);
  const body = req.method === 'POST' ? await readRaw(req) : '';
  const input = body ? JSON.parse(body) : {};

  if (req.method === 'GET' && path === '/events') return json(res, 200, filterEvents(records.events(), url.searchParams));
  if (req.method === 'GET' && path === '/revocations') return json(res, 200, records.revocations());
  if (req.method === 'GET' && path === '/tokens') return json(res, 200, records.tokens());
  if (req.method === 'GET' && path === '/stats') {
    return json(res, 200, { events: records.events().length, storage: store.counts(), faults, quirks: config.quirks });
  }
  if (req.method === 'POST' && path === '/reset') {
    records.reset();
    faults.length = 0;
    return json(res, 200, { ok: true });
  }
  if (path === '/faults') {
    if (req.method === 'GET') return json(res, 200, faults);
    if (req.method === 'DELETE') {
      faults.length = 0;
      return json(res, 200, { ok: true });
    }
    if (req.method === 'POST') {
      const fault = {
        endpoint: input.endpoint ?? 'token',
        grant_type: input.grant_type,
        status: input.status ?? 503,
        error: input.error ?? 'temporarily_unavailable',
        delay_ms: input.delay_ms ?? 0,
        remaining: input.count ?? 1,
      };
      faults.push(fault);
      return json(res, 200, fault);
    }
  }
  if (req.method === 'POST' && path === '/quirks') {
    Object.assign(config.quirks, input);
    return json(res, 200, config.quirks);
  }
  if (req.method === 'POST' && path === '/clients') {
    const client = normalizeClient(input);
    await new store.Adapter('Client').upsert(client.client_id, client);
    const found = await provider.Client.find(client.client_id);
    if (!found) return json(res, 400, { error: 'invalid client metadata' });
    return json(res, 200, client);
  }
  if (req.method === 'POST' && path === '/revoke-grants') {
    return json(res, 200, { revoked: await revokeGrants(provider, input) });
  }
  return json(res, 404, { error: 'no such test route', path: url.pathname });
}

// ---------------------------------------------------------------------------------------------------------------
// Server

function handler(provider) {
  const providerCallback = provider.callback();
  const interaction = interactionHandler(provider, config);
  return async (req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    if (url.pathname.startsWith('/_test/')) return testApi(provider, req, res, url);
    if (url.pathname.startsWith('/interaction/')) return interaction(req, res);
    if (url.pathname === '/api/me') return resource(provider, req, res);
    // A second address of the token endpoint, for clients whose refresh URL differs from their token URL; its
    // requests are recorded with `path: '/refresh'`.
    if (url.pathname === '/refresh') {
      req.aliasPath = '/refresh';
      req.url = `/token${url.search}`;
    }
    return providerCallback(req, res);
  };
}

let handle = (_req, res) => json(res, 503, { error: 'starting' });
let serverIssuer = '';
const server = http.createServer((req, res) => {
  Promise.resolve(handle(req, res)).catch((err) => {
    process.stderr.write(`request failed: ${err.stack ?? err}\n`);
    if (!res.headersSent) json(res, 500, { error: 'server_error', error_description: String(err.message) });
    else res.end();
  });
});

server.listen(config.port, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  serverIssuer = issuer;
  const provider = createProvider(issuer, loadClients());
  provider.use(recordingMiddleware({
    token: '/token', revocation: '/token/revocation', introspection: '/token/introspection',
  }));
  // The reason behind an error response (e.g. "refresh token already used"), kept for the records.
  for (const event of ['grant.error', 'revocation.error', 'introspection.error', 'authorization.error']) {
    provider.on(event, (ctx, err) => { ctx.state.errorDetail = err.error_detail ?? err.message; });
  }
  provider.on('server_error', (_ctx, err) => process.stderr.write(`oidc-provider server_error: ${err.stack}\n`));
  handle = handler(provider);
  process.stdout.write(`${JSON.stringify({
    issuer,
    port,
    pid: process.pid,
    authorization_endpoint: `${issuer}/auth`,
    token_endpoint: `${issuer}/token`,
    revocation_endpoint: `${issuer}/token/revocation`,
    introspection_endpoint: `${issuer}/token/introspection`,
    resource_endpoint: `${issuer}/api/me`,
    events_url: `${issuer}/_test/events`,
  })}\n`);
});

for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));

// Exit with the process that started us (a test binary killed without running its Drop).
const parentPid = process.ppid;
setInterval(() => { if (process.ppid !== parentPid) process.exit(0); }, 1000).unref();
