// An unbounded in-memory storage adapter for oidc-provider.
//
// oidc-provider's bundled memory adapter is an LRU of 1,000 entries: with more live grants than that, old
// ones are evicted and refreshes fail with `invalid_grant` for reasons that are not the client's. This one is a
// plain Map per model plus a grant index, so nothing is evicted while it is valid.
//
// Token models (whose `find` checks expiry itself) keep expired entries for OAUTH_EXPIRED_RETENTION seconds so
// that the provider can tell "expired" from "unknown"; a periodic sweep drops entries past that.

const TOKEN_MODELS = new Set(['AccessToken', 'ClientCredentials', 'RefreshToken', 'AuthorizationCode']);
const GRANTABLE = new Set([
  'AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode', 'BackchannelAuthenticationRequest',
]);

export function createStore({ retentionSeconds = 3600, observer = {} } = {}) {
  const models = new Map(); // model -> Map(id -> { payload, expiresAt })
  const grants = new Map(); // grantId -> Set("model\0id")
  const sessionUids = new Map();
  const userCodes = new Map();

  const table = (model) => {
    if (!models.has(model)) models.set(model, new Map());
    return models.get(model);
  };

  const expired = (entry, now = Date.now()) => entry.expiresAt !== undefined && entry.expiresAt <= now;

  function remove(model, id) {
    const entry = table(model).get(id);
    if (!entry) return undefined;
    table(model).delete(id);
    const { payload } = entry;
    if (payload.uid && sessionUids.get(payload.uid) === id) sessionUids.delete(payload.uid);
    if (payload.userCode && userCodes.get(payload.userCode) === id) userCodes.delete(payload.userCode);
    if (payload.grantId) grants.get(payload.grantId)?.delete(`${model}\0${id}`);
    return payload;
  }

  function sweep() {
    const cutoff = Date.now() - retentionSeconds * 1000;
    for (const [model, entries] of models) {
      for (const [id, entry] of entries) {
        if (entry.expiresAt !== undefined && entry.expiresAt <= cutoff) remove(model, id);
      }
    }
    for (const [grantId, members] of grants) if (members.size === 0) grants.delete(grantId);
  }
  const timer = setInterval(sweep, 30_000);
  timer.unref();

  class MapAdapter {
    constructor(model) {
      this.model = model;
    }

    async upsert(id, payload, expiresIn) {
      remove(this.model, id);
      const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : undefined;
      table(this.model).set(id, { payload, expiresAt });
      if (this.model === 'Session' && payload.uid) sessionUids.set(payload.uid, id);
      if (payload.userCode) userCodes.set(payload.userCode, id);
      if (GRANTABLE.has(this.model) && payload.grantId) {
        if (!grants.has(payload.grantId)) grants.set(payload.grantId, new Set());
        grants.get(payload.grantId).add(`${this.model}\0${id}`);
      }
      observer.upsert?.(this.model, id, payload, expiresAt);
    }

    async find(id) {
      const entry = table(this.model).get(id);
      if (!entry) return undefined;
      if (!TOKEN_MODELS.has(this.model) && expired(entry)) {
        remove(this.model, id);
        return undefined;
      }
      return entry.payload;
    }

    async findByUid(uid) {
      const id = sessionUids.get(uid);
      return id === undefined ? undefined : this.find(id);
    }

    async findByUserCode(userCode) {
      const id = userCodes.get(userCode);
      return id === undefined ? undefined : this.find(id);
    }

    async consume(id) {
      const entry = table(this.model).get(id);
      if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
      observer.consume?.(this.model, id);
    }

    async destroy(id) {
      if (remove(this.model, id)) observer.destroy?.(this.model, id);
    }

    async revokeByGrantId(grantId) {
      const members = grants.get(grantId);
      if (!members) return;
      grants.delete(grantId);
      for (const member of members) {
        const [model, id] = member.split('\0');
        if (remove(model, id)) observer.destroy?.(model, id);
      }
    }
  }

  return {
    Adapter: MapAdapter,
    sweep,
    size: () => [...models.values()].reduce((n, m) => n + m.size, 0),
    counts: () => Object.fromEntries([...models].map(([model, m]) => [model, m.size])),
  };
}
