// The login + consent step of the authorization-code flow.
//
// GET  /interaction/:uid  with OAUTH_AUTO_APPROVE=1: approve at once (303 back to the provider); with
//                         OAUTH_AUTO_APPROVE=deny: refuse at once (the client gets error=access_denied);
//                         otherwise: an HTML form with username, password and Approve / Deny buttons.
// POST /interaction/:uid  the form: any non-empty username, the password must equal OAUTH_PASSWORD
//                         (default "test-password"); a wrong one re-renders the form with status 401.
//
// One submission both logs the user in and grants every requested scope, so the provider redirects straight
// back to the client afterwards. The account id (the token's `sub`) is the username; when auto-approving it is
// the request's `login_hint`, else OAUTH_AUTO_APPROVE_USER (default "test-user").

import * as querystring from 'node:querystring';

const escape = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(details, { error } = {}) {
  const { uid, params, prompt, session } = details;
  const needsLogin = prompt.name === 'login' || !session?.accountId;
  const user = needsLogin ? (params.login_hint ?? '') : session.accountId;
  const login = needsLogin
    ? `<label>Username <input name="username" value="${escape(user)}" autocomplete="username"></label>
    <label>Password <input name="password" type="password" autocomplete="current-password"></label>`
    : `<p>Signed in as <b>${escape(user)}</b>.</p>`;
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>Test OAuth server: sign in</title></head>
<body>
  <h1>Authorize ${escape(params.client_id)}</h1>
  <p>Scopes requested: <code>${escape(params.scope ?? '(none)')}</code></p>
  ${error ? `<p class="error" role="alert">${escape(error)}</p>` : ''}
  <form method="post" action="/interaction/${escape(uid)}">
    ${login}
    <button type="submit" name="decision" value="approve">Approve</button>
    <button type="submit" name="decision" value="deny">Deny</button>
  </form>
</body></html>
`;
}

function send(res, status, type, body) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return querystring.parse(Buffer.concat(chunks).toString('utf8'));
}

async function approve(provider, req, res, details, accountId) {
  const { params } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId, clientId: params.client_id });
  if (params.scope) grant.addOIDCScope(params.scope);
  const grantId = await grant.save();
  await provider.interactionFinished(
    req,
    res,
    { login: { accountId }, consent: { grantId } },
    { mergeWithLastSubmission: false },
  );
}

async function deny(provider, req, res) {
  await provider.interactionFinished(
    req,
    res,
    { error: 'access_denied', error_description: 'the user denied the request' },
    { mergeWithLastSubmission: false },
  );
}

export function interactionHandler(provider, config) {
  return async function handleInteraction(req, res) {
    let details;
    try {
      details = await provider.interactionDetails(req, res);
    } catch (err) {
      send(res, 400, 'text/plain; charset=utf-8', `interaction not found: ${err.message}\n`);
      return;
    }
    const sessionUser = details.session?.accountId;

    if (req.method === 'GET') {
      if (config.autoApprove === 'deny') return deny(provider, req, res);
      if (config.autoApprove) {
        const user = details.params.login_hint || sessionUser || config.autoApproveUser;
        return approve(provider, req, res, details, user);
      }
      return send(res, 200, 'text/html; charset=utf-8', page(details));
    }

    if (req.method === 'POST') {
      const form = await readForm(req);
      if (form.decision === 'deny') return deny(provider, req, res);
      if (details.prompt.name !== 'login' && sessionUser) {
        return approve(provider, req, res, details, sessionUser);
      }
      const username = String(form.username ?? '').trim();
      if (!username || form.password !== config.password) {
        return send(res, 401, 'text/html; charset=utf-8', page(details, { error: 'invalid username or password' }));
      }
      return approve(provider, req, res, details, username);
    }

    return send(res, 405, 'text/plain; charset=utf-8', 'method not allowed\n');
  };
}
