#!/usr/bin/env node
// Drives Debian's headless Chromium (/usr/bin/chromium) through a Latchkey connect link, as a user would, and
// takes a screenshot (PNG) of every page it sees. Used by tests/connect_browser.rs.
//
//   node connect.mjs --scenario api-key --url URL --out DIR --key KEY [--wrong-key KEY]
//   node connect.mjs --scenario oauth   --url URL --out DIR [--username U] [--password P]
//
// api-key: open the form, (optionally) submit a wrong key and look at the error, then submit the key; then open
//          the spent link once more.
// oauth:   open the link, follow it to the provider's login form, fill username and password, approve; approve a
//          separate consent page too if the provider shows one; end wherever the browser lands.
// The browser reaches loopback only: an activation's return URL must point at a local server (the test's).
//
// Prints one JSON line on stdout: {"ok":true,"scenario":..,"finalUrl":..,"pages":[{step,url,status,title,heading,
// alert,invalid,screenshot}],"consoleErrors":[..]}; on failure {"ok":false,"error":..,...} and exit code 1.
// Env: CHROMIUM (default /usr/bin/chromium), BROWSER_TIMEOUT_MS (default 15000).
import { mkdirSync, existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    const v = argv[i + 1];
    if (v === undefined || v.startsWith('--')) throw new Error(`${a} needs a value`);
    out[a.slice(2)] = v;
    i++;
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const timeout = Number(process.env.BROWSER_TIMEOUT_MS || 15000);
const report = { ok: false, scenario: args.scenario, finalUrl: null, pages: [], consoleErrors: [] };

function finish(code) {
  process.stdout.write(JSON.stringify(report) + '\n');
  process.exit(code);
}

if (!args.url || !args.out || !['api-key', 'oauth'].includes(args.scenario)) {
  report.error = 'usage: connect.mjs --scenario api-key|oauth --url URL --out DIR [...]';
  finish(2);
}
if (!existsSync(executablePath)) {
  report.error = `${executablePath} is missing: install Debian's chromium (apt-get update && apt-get install -y chromium, ~30 s) or run scripts/browser-deps.sh`;
  finish(3);
}
const outDir = resolve(args.out);
mkdirSync(outDir, { recursive: true });

// What the page shows, for the report: title, first heading, an alert's text, invalid fields.
async function snapshot(page, step, response) {
  const file = join(outDir, `${String(report.pages.length + 1).padStart(2, '0')}-${step}.png`);
  await page.screenshot({ path: file, fullPage: true });
  const seen = await page.evaluate(() => ({
    title: document.title,
    heading: document.querySelector('h1')?.textContent?.trim() ?? null,
    alert: document.querySelector('[role=alert]')?.textContent?.trim() ?? null,
    status: document.querySelector('[role=status]')?.textContent?.trim() ?? null,
    invalid: [...document.querySelectorAll('[aria-invalid=true]')].map((e) => e.getAttribute('name')),
    focused: document.activeElement?.getAttribute('name') ?? null,
    images: [...document.images].map((i) => ({ src: i.src, alt: i.alt, loaded: i.complete && i.naturalWidth > 0 })),
    buttonColor: (() => {
      const b = document.querySelector('button, .button');
      return b ? getComputedStyle(b).backgroundColor : null;
    })(),
    help: document.querySelector('.help a')?.getAttribute('href') ?? null,
    formAction: document.querySelector('form')?.action ?? null,
  }));
  const entry = { step, url: page.url(), httpStatus: response?.status() ?? null, ...seen, screenshot: file };
  report.pages.push(entry);
  return entry;
}

// Clicks `locator` and waits for the navigation it starts to finish; returns the main document's response.
async function submit(page, locator) {
  const [response] = await Promise.all([page.waitForNavigation({ waitUntil: 'load', timeout }), locator.click({ timeout })]);
  // A redirect chain ends in the last document: wait until it has loaded.
  await page.waitForLoadState('load', { timeout });
  return response;
}

async function apiKey(page) {
  if (!args.key) throw new Error('--key is required for the api-key scenario');
  let res = await page.goto(args.url, { waitUntil: 'load', timeout });
  const form = await snapshot(page, 'form', res);
  if (!(await page.locator('input[type=password]').count())) throw new Error(`no password field on the form (${form.title})`);
  // The same form on a phone-sized screen (opening the link changes nothing).
  const phone = await page.context().browser().newContext({ viewport: { width: 390, height: 760 }, isMobile: true });
  const small = await phone.newPage();
  await small.goto(args.url, { waitUntil: 'load', timeout });
  await snapshot(small, 'form-phone', null);
  await phone.close();
  if (args['wrong-key']) {
    await page.getByLabel('API key').fill(args['wrong-key']);
    res = await submit(page, page.getByRole('button', { name: /connect/i }));
    await snapshot(page, 'error', res);
  }
  await page.getByLabel('API key').fill(args.key);
  res = await submit(page, page.getByRole('button', { name: /connect/i }));
  await snapshot(page, 'done', res);
  // The link again, now spent: the refusal page.
  const again = await page.context().newPage();
  await snapshot(again, 'reopened', await again.goto(args.url, { waitUntil: 'load', timeout }));
  await again.close();
}

async function oauth(page) {
  let res = await page.goto(args.url, { waitUntil: 'load', timeout });
  const username = args.username ?? 'alice';
  const password = args.password ?? 'test-password';
  // Up to three provider pages (login, consent), then wherever the provider sends the browser back to.
  for (let i = 0; i < 3; i++) {
    const login = page.locator('input[name=password]');
    const approve = page.locator('button[value=approve], button:has-text("Approve"), button:has-text("Allow")').first();
    if (await login.count()) {
      await snapshot(page, 'provider-login', res);
      const user = page.locator('input[name=username]');
      if (await user.count()) await user.fill(username);
      await login.fill(password);
      res = await submit(page, approve.or(page.locator('button[type=submit]').first()).first());
    } else if (await approve.count()) {
      await snapshot(page, 'provider-consent', res);
      res = await submit(page, approve);
    } else {
      break;
    }
  }
  await snapshot(page, 'done', res);
}

let browser;
try {
  browser = await chromium.launch({
    executablePath,
    headless: true,
    timeout,
    // Playwright gives the browser a fresh temporary profile of its own (--user-data-dir).
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
  const context = await browser.newContext({ viewport: { width: 1024, height: 720 }, locale: 'en-US' });
  const page = await context.newPage();
  // Errors the page logs (a CSP violation, a script error); HTTP error statuses are reported per page instead.
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) report.consoleErrors.push(m.text());
  });
  page.on('pageerror', (e) => report.consoleErrors.push(String(e)));
  if (args.scenario === 'api-key') await apiKey(page);
  else await oauth(page);
  report.finalUrl = page.url();
  report.ok = true;
} catch (e) {
  report.error = String(e?.message ?? e).split('\n')[0];
  report.finalUrl = report.finalUrl ?? null;
} finally {
  if (browser) await browser.close().catch(() => {});
}
finish(report.ok ? 0 : 1);
