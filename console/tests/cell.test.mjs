// The app pages that need a Cell, in Chromium (playwright-core), against
// the core, registry and one-node Kubernetes Cell started by
// core/tests/console.rs (`app_pages_with_a_real_cell`).
import { after, afterEach, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { chromium } from 'playwright-core';

const URL = process.env.CONSOLE_URL;
const PASSWORD = process.env.CONSOLE_PASSWORD;
const REGISTRY = process.env.CONSOLE_REGISTRY;
const SHOTS = new globalThis.URL('../test-results/', import.meta.url).pathname;
// Pulling the image and starting the pod is the Cell's work: wait long, assert nothing about time.
const PATIENCE = { timeout: 180000 };

assert.ok(URL && PASSWORD && REGISTRY, 'run through core/tests/console.rs');
mkdirSync(SHOTS, { recursive: true });

let browser;
let p;
before(async () => {
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', headless: true, args: ['--no-sandbox'] });
  p = await (await browser.newContext({ viewport: { width: 1280, height: 860 } })).newPage();
});
afterEach(async (t) => {
  if (t.error) await p.screenshot({ path: `${SHOTS}failed-cell-${t.name.slice(0, 30).replace(/\W+/g, '-')}.png`, fullPage: true });
});
after(() => browser?.close());

const shot = (name) => p.screenshot({ path: `${SHOTS}${name}.png`, fullPage: true });

test('sign in and create an app placed in the Cell', async () => {
  await p.goto(URL);
  await p.getByLabel('User name').fill('mia');
  await p.getByLabel('Password').fill(PASSWORD);
  await p.getByRole('button', { name: 'Sign in' }).click();
  await p.getByRole('button', { name: 'New app' }).click();
  const dlg = p.getByRole('dialog', { name: 'New app' });
  await dlg.getByLabel('Name').fill('shop');
  await dlg.getByLabel('Image repository').fill(`${REGISTRY}/team/web`);
  await dlg.getByRole('button', { name: 'Create app' }).click();
  await p.getByRole('heading', { name: /App shop/ }).waitFor();
  assert.match(await p.locator('.facts').first().innerText(), /Cells\s+cella/);
});

test('deploy the newest pushed tag; the version becomes ready in the Cell', async () => {
  await p.getByRole('button', { name: 'Deploy' }).click();
  const dlg = p.getByRole('dialog', { name: 'Deploy shop' });
  await dlg.getByRole('button', { name: 'Deploy version 1' }).waitFor();
  // Tags from the registry's own notifications, newest first.
  assert.deepEqual(await p.locator('#deploy-tags option').evaluateAll((o) => o.map((x) => x.value)), ['v2', 'v1']);
  assert.equal(await dlg.getByLabel('Tag', { exact: true }).inputValue(), 'v2');
  await dlg.getByRole('button', { name: 'Deploy version 1' }).click();
  const cell = p.locator('tr[data-version="1"] li[data-cell="cella"]');
  await cell.waitFor();
  await cell.getByText('1 / 1').waitFor(PATIENCE);
  await shot('cell-version-ready');
});

test('scale to 2: both pods ready, the containers tab shows IP, node and Cell', async () => {
  await p.getByRole('button', { name: 'Scale' }).click();
  const dlg = p.getByRole('dialog', { name: 'Scale shop' });
  await dlg.getByLabel(/Replicas of v1/).fill('2');
  await dlg.getByRole('button', { name: 'Scale' }).click();
  await p.locator('tr[data-version="1"] li[data-cell="cella"]').getByText('2 / 2').waitFor(PATIENCE);
  await p.getByRole('link', { name: 'containers' }).click();
  const rows = p.getByRole('table', { name: 'containers' }).locator('tbody tr');
  await rows.nth(1).waitFor();
  await p.getByRole('table', { name: 'containers' }).getByText('ready').nth(1).waitFor(PATIENCE);
  for (const r of await rows.allInnerTexts()) {
    assert.match(r, /v1/);
    assert.match(r, /\b10\.\d+\.\d+\.\d+\b/, `pod IP from the Cell's pool: ${r}`);
    assert.match(r, /cella/);
  }
  await shot('cell-containers');
  await p.getByRole('link', { name: 'events' }).click();
  await p.getByRole('table', { name: 'events' }).getByText('Scheduled').first().waitFor(PATIENCE);
});

test("the app's IP ranges tab shows the pool an admin bound to it", async () => {
  const auth = 'Basic ' + Buffer.from(`root:${PASSWORD}`).toString('base64');
  const r = await fetch(`${URL}/api/v1/apps/shop/ip-pools/cella/web`, {
    method: 'PUT',
    headers: { authorization: auth, 'content-type': 'application/json' },
    body: '{}',
  });
  assert.equal(r.status, 200, await r.text());
  await p.getByRole('link', { name: 'ip ranges' }).click();
  const row = p.getByRole('table', { name: 'IP ranges' }).locator('tr[data-cell="cella"]');
  await row.waitFor();
  const text = await row.innerText();
  assert.match(text, /cella\s+10\.\d+\.\d+\.0\/24\s+web\s+133/);
  // The pool's use: the app's 2 pods at least, of the /24's 253.
  const [, used] = text.match(/(\d+) used \/ \d+ free of 253/) ?? [];
  assert.ok(Number(used) >= 2, text);
  await shot('app-ip-ranges');
});

test('boss lists the Cell with its app', async () => {
  await p.getByRole('button', { name: 'Sign out' }).click();
  await p.goto(`${URL}/boss#/cells`);
  await p.getByLabel('User name').fill('root');
  await p.getByLabel('Password').fill(PASSWORD);
  await p.getByRole('button', { name: 'Sign in' }).click();
  const row = p.locator('tr[data-cell="cella"]');
  await row.waitFor();
  assert.match(await row.innerText(), /active\s+1\s/);
  // Its node, live from the apiserver: Ready, with the pods' requests against what it can give.
  const nodes = p.getByRole('table', { name: 'nodes of cella' });
  await nodes.waitFor();
  const node = nodes.locator('tbody tr').first();
  assert.match(await node.innerText(), /Ready/);
  assert.match(await node.innerText(), /\d+m \/ [1-9]\d*m/);
  // Its IP pool, from the Cell's IPAM: the two pods' addresses are in use, in a claimed node block.
  const pool = p.getByRole('table', { name: 'IP pools of cella' }).locator('tr[data-pool="web"]');
  await pool.waitFor();
  const [, used, assignable] = (await pool.innerText()).match(/(\d+) \/ (\d+) \(\d+%\)/) ?? [];
  assert.ok(Number(used) >= 2 && Number(assignable) > Number(used), `pool row: ${await pool.innerText()}`);
  assert.match(await pool.innerText(), /\b[1-9]\d* \/ [1-9]\d*\s+shop$/, 'bound to the app');
  await shot('boss-cells');
});
