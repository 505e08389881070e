// The server's own records, read by tests under /_test: every request to the token, revocation, introspection,
// authorization and resource endpoints, and what became of every token it issued.
//
// Token values never appear in the records: a token is named by its fingerprint, the first 16 hex digits of the
// SHA-256 of its value (tests compute the same with `fingerprint`), so the records can be dumped into a test log
// without leaking a credential.

import { createHash } from 'node:crypto';

export function fingerprint(value) {
  if (typeof value !== 'string' || value === '') return undefined;
  return createHash('sha256').update(value).digest('hex').slice(0, 16);
}

const KINDS = {
  AccessToken: 'access_token',
  ClientCredentials: 'access_token',
  RefreshToken: 'refresh_token',
  AuthorizationCode: 'authorization_code',
};

export function createRecords() {
  let seq = 0;
  const events = [];
  const revocations = [];
  // fingerprint -> { kind, model, client_id, account_id, grant_id, issued_at, expires_at, uses, consumed_at,
  //                  revoked_at }
  const tokens = new Map();

  const now = () => Date.now();
  const stamp = () => {
    const t = now();
    return { seq: ++seq, time: new Date(t).toISOString(), t_ms: t };
  };

  // Storage observer: keeps the token table in step with what the provider stores. Opaque token values are
  // their storage ids, so the id's fingerprint is the token's fingerprint.
  const observer = {
    upsert(model, id, payload, expiresAt) {
      const kind = KINDS[model];
      if (!kind) return;
      const fp = fingerprint(id);
      const previous = tokens.get(fp);
      tokens.set(fp, {
        kind,
        model,
        client_id: payload.clientId,
        account_id: payload.accountId,
        grant_id: payload.grantId,
        issued_at: previous?.issued_at ?? now(),
        expires_at: expiresAt,
        uses: previous?.uses ?? 0,
        consumed_at: previous?.consumed_at,
        revoked_at: previous?.revoked_at,
        rotations: payload.rotations ?? 0,
      });
    },
    consume(model, id) {
      const entry = tokens.get(fingerprint(id));
      if (entry && !entry.consumed_at) entry.consumed_at = now();
    },
    destroy(model, id) {
      const entry = tokens.get(fingerprint(id));
      if (entry && !entry.revoked_at) entry.revoked_at = now();
    },
  };

  // A token's state as of time `at` (ms): known to this server, expired, revoked, consumed (a rotated refresh
  // token), and how often it had been presented before.
  function tokenState(fp, at = now()) {
    const entry = tokens.get(fp);
    if (!entry) return { known: false };
    return {
      known: true,
      kind: entry.kind,
      client_id: entry.client_id,
      account_id: entry.account_id,
      expired: entry.expires_at !== undefined && entry.expires_at <= at,
      revoked: entry.revoked_at !== undefined && entry.revoked_at < at,
      consumed: entry.consumed_at !== undefined && entry.consumed_at < at,
      prior_uses: entry.uses,
    };
  }

  // A token presented to an endpoint: its state when the request arrived (`at`); with `count`, the
  // presentation counts as a use (token endpoint, resource endpoint; not revocation or introspection).
  function presented(value, { count = true, at = now() } = {}) {
    const fp = fingerprint(value);
    if (!fp) return undefined;
    const state = { fingerprint: fp, ...tokenState(fp, at) };
    const entry = tokens.get(fp);
    if (entry && count) entry.uses += 1;
    return state;
  }

  function push(list, event) {
    const full = { ...stamp(), ...event };
    list.push(full);
    return full;
  }

  return {
    observer,
    fingerprint,
    presented,
    tokenState,
    event: (event) => push(events, event),
    revocation: (event) => push(revocations, event),
    events: () => events,
    revocations: () => revocations,
    tokens: () => Object.fromEntries(
      [...tokens].map(([fp, entry]) => [fp, { ...entry, ...tokenState(fp) }]),
    ),
    reset() {
      events.length = 0;
      revocations.length = 0;
    },
  };
}
