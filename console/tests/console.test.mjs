// Browser tests of the console and boss: Debian's Chromium driven by
// playwright-core (no browser download), against the real core started by
// core/tests/console.rs, which passes CONSOLE_URL and friends. Run alone:
//   cargo test -p leengine-core --test console console_and_boss_in_chromium
import { after, afterEach, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { chromium } from 'playwright-core';

const URL = process.env.CONSOLE_URL;
const PASSWORD = process.env.CONSOLE_PASSWORD;
/** The real git daemon's repository the real build agent clones, and its commit. */
const GIT_REPO = process.env.CONSOLE_GIT_REPO;
const COMMIT = process.env.CONSOLE_COMMIT;
/** The compile and base image, built locally in the build host's dockerd. */
const BASE_IMAGE = process.env.CONSOLE_BASE_IMAGE;
const REGISTRY = process.env.CONSOLE_REGISTRY;
const NOTIFY_SECRET = process.env.CONSOLE_NOTIFY_SECRET;
/** A free port for the domain the real nginx agent of group `lbg` serves. */
const NGINX_PORT = Number(process.env.CONSOLE_NGINX_PORT);
const SHOTS = new globalThis.URL('../test-results/', import.meta.url).pathname;
const WIDE = { width: 1280, height: 860 };
const PHONE = { width: 390, height: 844 };

assert.ok(URL && PASSWORD && GIT_REPO && COMMIT && BASE_IMAGE && REGISTRY && NOTIFY_SECRET && NGINX_PORT, 'run through core/tests/console.rs (it sets CONSOLE_URL, …)');
mkdirSync(SHOTS, { recursive: true });

let browser;
/** Requests that left the core's origin: there must be none. */
const outside = [];

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    // Root in a container: Chromium's sandbox needs user namespaces we may not have.
    args: ['--no-sandbox'],
  });
});
after(async () => {
  await browser?.close();
  assert.deepEqual(outside, [], 'no request may leave the core');
});

const pages = [];
afterEach(async (t) => {
  // A failed test leaves a picture of where it stood.
  for (const [i, p] of pages.entries()) {
    if (!p.isClosed()) await p.screenshot({ path: `${SHOTS}failed-${t.name.slice(0, 40).replace(/\W+/g, '-')}-${i}.png` }).catch(() => {});
    await p.context().close().catch(() => {});
  }
  pages.length = 0;
});

async function page(viewport = WIDE) {
  const ctx = await browser.newContext({ viewport });
  const p = await ctx.newPage();
  pages.push(p);
  p.on('request', (r) => {
    if (!r.url().startsWith(URL) && !r.url().startsWith('data:')) outside.push(r.url());
  });
  const errors = [];
  p.on('pageerror', (e) => errors.push(String(e)));
  p.errors = errors;
  return p;
}

async function signIn(p, user, path = '/') {
  await p.goto(`${URL}${path}`);
  await p.getByLabel('User name').fill(user);
  await p.getByLabel('Password').fill(PASSWORD);
  await p.getByRole('button', { name: 'Sign in' }).click();
  await p.getByRole('button', { name: 'Sign out' }).waitFor();
}

async function api(method, path, user, body) {
  const login = await fetch(`${URL}/api/v1/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user, password: PASSWORD }),
  });
  assert.equal(login.status, 201);
  const { token } = await login.json();
  const resp = await fetch(`${URL}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: resp.status, body: await resp.json().catch(() => null) };
}

const shot = (p, name) => p.screenshot({ path: `${SHOTS}${name}.png`, fullPage: true });

test('a wrong password shows the problem detail; the right one signs in', async () => {
  const p = await page();
  await p.goto(URL);
  await p.getByLabel('User name').fill('mia');
  await p.getByLabel('Password').fill('not-the-password');
  await p.getByRole('button', { name: 'Sign in' }).click();
  const alert = p.getByRole('alert');
  await alert.waitFor();
  assert.match(await alert.innerText(), /unauthenticated/);
  await shot(p, 'signin-error');
  await p.getByLabel('Password').fill(PASSWORD);
  await p.getByRole('button', { name: 'Sign in' }).click();
  await p.getByRole('heading', { name: 'Apps' }).waitFor();
  assert.match(await p.getByText(/Quota: 0 of 20 apps/).innerText(), /0 of 200 containers/);
  assert.deepEqual(p.errors, []);
  await p.context().close();
});

test('create an app, add a Developer; the Developer gets no deploy button and the API refuses', async () => {
  // The image group `team` (mia's) exists: core/tests/console.rs made it
  // and pushed the tags deployed below into the real registry.

  const p = await page();
  await signIn(p, 'mia');
  await p.getByRole('button', { name: 'New app' }).click();
  const dlg = p.getByRole('dialog', { name: 'New app' });
  await dlg.getByLabel('Name').fill('web');
  await dlg.getByLabel('Description').fill('the shop front');
  await dlg.getByLabel('Image repository').fill(`${REGISTRY}/team/web`);
  await dlg.getByRole('button', { name: 'Create app' }).click();
  await p.getByRole('heading', { name: /App web/ }).waitFor();
  assert.match(await p.locator('.facts').first().innerText(), /team\/web/);

  // The list finds it by search.
  await p.getByRole('link', { name: 'Apps' }).click();
  await p.getByLabel('Search apps').fill('shop');
  await p.locator('tr[data-app="web"]').waitFor();
  await p.getByLabel('Search apps').fill('nothing-like-it');
  await p.getByText('No apps match').waitFor();

  await p.evaluate(() => (location.hash = '#/apps/web/members'));
  await p.getByLabel('User name').fill('dev');
  await p.getByRole('combobox', { name: 'Role', exact: true }).selectOption('Developer');
  await p.getByRole('button', { name: 'Add member' }).click();
  const row = p.locator('tr[data-member="dev"]');
  await row.waitFor();
  assert.match(await row.innerText(), /Developer/);
  await shot(p, 'app-members');
  await p.context().close();

  const d = await page();
  await signIn(d, 'dev');
  await d.locator('tr[data-app="web"]').waitFor();
  assert.match(await d.locator('tr[data-app="web"]').innerText(), /Developer/);
  await d.getByRole('link', { name: 'web' }).click();
  await d.getByRole('heading', { name: /App web/ }).waitFor();
  await d.getByRole('link', { name: 'members' }).click();
  await d.locator('tr[data-member="mia"]').waitFor();
  assert.equal(await d.getByRole('button', { name: 'Deploy' }).count(), 0, 'a Developer is offered no deploy');
  assert.equal(await d.getByRole('button', { name: 'Scale' }).count(), 0);
  assert.equal(await d.getByRole('button', { name: 'Add member' }).count(), 0);
  await shot(d, 'developer-view');
  await d.context().close();

  const refused = await api('POST', '/api/v1/apps/web/versions', 'dev', { image: `${REGISTRY}/team/web`, tag: 'v1' });
  assert.equal(refused.status, 403, JSON.stringify(refused.body));
  assert.equal(refused.body.code, 'forbidden');
});

/** What the registry sends the core after a manifest push (its notification format). */
async function pushed(repository, tag, user) {
  const resp = await fetch(`${URL}/api/v1/registry/events`, {
    method: 'POST',
    headers: { authorization: `Bearer ${NOTIFY_SECRET}`, 'content-type': 'application/vnd.docker.distribution.events.v1+json' },
    body: JSON.stringify({
      events: [
        {
          id: `push-${repository}-${tag}`.replace(/[^A-Za-z0-9-]/g, "-"),
          timestamp: new Date().toISOString(),
          action: 'push',
          target: {
            mediaType: 'application/vnd.docker.distribution.manifest.v2+json',
            repository,
            digest: `sha256:${'ab'.repeat(32)}`,
            tag,
          },
          actor: { name: user },
        },
      ],
    }),
  });
  assert.ok(resp.ok, `notification: ${resp.status} ${await resp.text()}`);
}

test('as Master: deploy from the dialog, scale, and see the versions', async () => {
  await pushed('team/web', 'v7', 'mia');
  // mia owns the app; make her a Master on a second one to test the role, not ownership.
  assert.equal((await api('POST', '/api/v1/apps', 'root', { name: 'api', image: `${REGISTRY}/team/web` })).status, 201);
  assert.equal((await api('PUT', '/api/v1/apps/api/members/mia', 'root', { role: 'Master' })).status, 200);

  const p = await page();
  await signIn(p, 'mia');
  await p.evaluate(() => (location.hash = '#/apps/api'));
  await p.getByText('your role: Master').waitFor();
  assert.equal(await p.getByRole('button', { name: 'Delete app' }).count(), 0, 'deleting needs Owner');
  await p.getByRole('button', { name: 'Deploy' }).click();
  let dlg = p.getByRole('dialog', { name: 'Deploy api' });
  assert.equal(await dlg.getByLabel('Image').inputValue(), `${REGISTRY}/team/web`);
  // The tags come from the registry's pushes; the newest is chosen.
  assert.equal(await dlg.getByLabel('Tag', { exact: true }).inputValue(), 'v7');
  assert.deepEqual(await p.locator('#deploy-tags option').evaluateAll((o) => o.map((x) => x.value)), ['v7']);
  await dlg.getByLabel('Tag', { exact: true }).fill('v1');
  await dlg.getByLabel('Replicas per Cell').fill('2');
  await dlg.getByRole('button', { name: 'Deploy version 1' }).click();
  await p.locator('tr[data-version="1"]').waitFor();
  assert.match(await p.locator('tr[data-version="1"]').innerText(), /team\/web:v1/);

  // The second deploy is pre-filled from the first: only the tag changes.
  await p.getByRole('button', { name: 'Deploy' }).click();
  dlg = p.getByRole('dialog', { name: 'Deploy api' });
  await dlg.getByText('Pre-filled from v1').waitFor();
  assert.equal(await dlg.getByLabel('Replicas per Cell').inputValue(), '2');
  await dlg.getByLabel('Tag', { exact: true }).fill('v2');
  await dlg.getByRole('button', { name: 'Deploy version 2' }).click();
  await p.locator('tr[data-version="2"]').waitFor();

  await p.getByRole('button', { name: 'Scale' }).click();
  dlg = p.getByRole('dialog', { name: 'Scale api' });
  await dlg.getByLabel(/Replicas of v2/).fill('3');
  await dlg.getByRole('button', { name: 'Scale' }).click();
  await p.getByText('v2 v2 × 3').waitFor();
  await shot(p, 'app-versions');

  // A refusal is shown as the server words it.
  await p.getByRole('button', { name: 'Scale' }).click();
  dlg = p.getByRole('dialog', { name: 'Scale api' });
  await dlg.getByLabel(/Replicas of v2/).fill('500');
  await dlg.getByRole('button', { name: 'Scale' }).click();
  await dlg.getByRole('alert').waitFor();
  assert.match(await dlg.getByRole('alert').innerText(), /quota exceeded.*containers/);
  await shot(p, 'scale-quota-error');
  await p.keyboard.press('Escape');

  await p.getByRole('link', { name: 'activity' }).click();
  await p.getByRole('list', { name: 'activity' }).getByText('scaled').first().waitFor();
  await p.context().close();
});

test('an image page lists its pushed tags with the docker pull line', async () => {
  const p = await page();
  await signIn(p, 'mia');
  await p.getByRole('link', { name: 'Images' }).click();
  await p.getByRole('link', { name: 'team/web' }).click();
  const tags = p.getByRole('table', { name: 'tags' });
  await tags.waitFor();
  const text = await tags.innerText();
  assert.match(text, /v7/);
  assert.ok(text.includes(`docker pull ${REGISTRY}/team/web:v7`), text);
  await shot(p, 'image-tags');
  await p.context().close();
});

test('an Owner adds members to an image group and an image; each member sees it with the role', async () => {
  // ivy and quin are new: root creates quin in boss's form, ivy through the API.
  assert.equal((await api('POST', '/api/v1/users', 'root', { name: 'ivy', password: PASSWORD })).status, 201);
  const b = await page();
  await signIn(b, 'root', '/boss');
  await b.getByLabel('New user name').fill('quin');
  await b.getByLabel('Initial password').fill(PASSWORD);
  await b.getByRole('button', { name: 'Create user' }).click();
  await b.locator('tr[data-user="quin"]').waitFor();
  await b.context().close();

  const p = await page();
  await signIn(p, 'mia');
  await p.evaluate(() => (location.hash = '#/groups/team/members'));
  await p.getByRole('heading', { name: 'Image group team' }).waitFor();
  await p.getByLabel('User name').fill('quin');
  await p.getByRole('combobox', { name: 'Role', exact: true }).selectOption('Developer');
  await p.getByRole('button', { name: 'Add member' }).click();
  await p.locator('tr[data-member="quin"]').waitFor();
  assert.match(await p.locator('tr[data-member="quin"]').innerText(), /Developer/);
  await shot(p, 'group-members');
  await p.evaluate(() => (location.hash = '#/images/team/web/members'));
  await p.getByRole('heading', { name: 'Image team/web' }).waitFor();
  await p.getByLabel('User name').fill('ivy');
  await p.getByRole('combobox', { name: 'Role', exact: true }).selectOption('Reporter');
  await p.getByRole('button', { name: 'Add member' }).click();
  await p.locator('tr[data-member="ivy"]').waitFor();
  assert.match(await p.locator('tr[data-member="ivy"]').innerText(), /Reporter/);
  await shot(p, 'image-members');
  await p.context().close();

  const q = await page();
  await signIn(q, 'quin');
  await q.getByRole('link', { name: 'Image groups' }).click();
  const group = q.locator('tr[data-name="team"]');
  await group.waitFor();
  assert.match(await group.innerText(), /Developer/);
  await q.context().close();

  const i = await page();
  await signIn(i, 'ivy');
  await i.getByRole('link', { name: 'Images' }).click();
  const image = i.locator('tr[data-name="team/web"]');
  await image.waitFor();
  assert.match(await image.innerText(), /Reporter/);
  await i.getByRole('link', { name: 'team/web' }).click();
  await i.getByText('your role: Reporter').waitFor();
  // A Reporter may pull, not change the image: no visibility switch.
  assert.equal(await i.getByRole('button', { name: /Make (public|private)/ }).count(), 0);
  await i.getByRole('table', { name: 'tags' }).waitFor();
  await shot(i, 'image-reporter-view');
  await i.context().close();
});

test("an admin sets a user's quota in boss; beyond it the user's create and deploy show the server's detail", async () => {
  const b = await page();
  await signIn(b, 'root', '/boss');
  await b.getByRole('button', { name: 'Quota of quin' }).click();
  const dlg = b.getByRole('dialog', { name: 'Quota of quin' });
  await dlg.getByLabel('Apps').fill('1');
  await dlg.getByLabel('Containers').fill('2');
  await dlg.getByRole('button', { name: 'Save quota' }).click();
  await dlg.waitFor({ state: 'detached' });
  const row = b.locator('tr[data-user="quin"]');
  // The list reloads after the save.
  await row.getByRole('cell', { name: '0 / 1', exact: true }).waitFor();
  assert.match(await row.innerText(), /0 \/ 1\s+0 \/ 2/);
  await shot(b, 'boss-quota');
  await b.context().close();
  const quin = (await api('GET', '/api/v1/users', 'root')).body.find((u) => u.name === 'quin');
  assert.deepEqual([quin.quota.max_apps, quin.quota.max_containers], [1, 2], JSON.stringify(quin));

  const p = await page();
  await signIn(p, 'quin');
  await p.getByText(/Quota: 0 of 1 apps/).waitFor();
  const create = async (name) => {
    await p.getByRole('button', { name: 'New app' }).click();
    const d = p.getByRole('dialog', { name: 'New app' });
    await d.getByLabel('Name').fill(name);
    await d.getByLabel('Image repository').fill(`${REGISTRY}/team/web`);
    await d.getByRole('button', { name: 'Create app' }).click();
    return d;
  };
  await create('quin1');
  await p.getByRole('heading', { name: /App quin1/ }).waitFor();
  // Three containers where two are allowed: refused, with the numbers.
  await p.getByRole('button', { name: 'Deploy' }).click();
  let dlg2 = p.getByRole('dialog', { name: 'Deploy quin1' });
  await dlg2.getByLabel('Tag', { exact: true }).fill('v1');
  await dlg2.getByLabel('Replicas per Cell').fill('3');
  await dlg2.getByRole('button', { name: 'Deploy version 1' }).click();
  await dlg2.getByRole('alert').waitFor();
  assert.match(await dlg2.getByRole('alert').innerText(), /quota exceeded: at most 2 containers \(in use 0, asked \+3\)/);
  await shot(p, 'deploy-quota-error');
  await p.keyboard.press('Escape');
  assert.equal((await api('GET', '/api/v1/apps/quin1/versions', 'quin')).body.length, 0, 'nothing was deployed');
  // A second app where one is allowed.
  await p.getByRole('link', { name: 'Apps' }).click();
  const d = await create('quin2');
  await d.getByRole('alert').waitFor();
  assert.match(await d.getByRole('alert').innerText(), /quota exceeded: at most 1 apps/);
  await shot(p, 'create-quota-error');
  assert.equal((await api('GET', '/api/v1/apps/quin2', 'root')).status, 404, 'no half-made app');
  await p.context().close();
});

test('a build run on a real build agent: manual trigger, a bar per stage, the live log', async () => {
  const p = await page();
  await signIn(p, 'mia');
  await p.getByRole('link', { name: 'Builds' }).click();
  await p.getByText('New build config').click();
  await p.getByLabel('Id', { exact: true }).fill('web');
  await p.getByLabel('Git repository').fill(GIT_REPO);
  await p.getByLabel('Target image').fill(`${REGISTRY}/team/web`);
  await p.getByLabel('Compile image').fill(BASE_IMAGE);
  await p.getByLabel('Compile script').fill('build.sh');
  await p.getByLabel('Outputs').fill('target/app.txt');
  await p.getByRole('button', { name: 'Create build config' }).click();
  const hook = p.getByRole('definition').filter({ hasText: 'shown only now' });
  await hook.waitFor();
  await p.evaluate(() => (location.hash = '#/builds/web'));
  await p.getByRole('heading', { name: 'Build config web' }).waitFor();
  assert.match(await p.locator('dl[aria-label=webhook]').innerText(), /\/api\/v1\/builds\/configs\/web\/webhook/);
  await p.getByRole('button', { name: 'Build now' }).click();
  const log = p.getByRole('region', { name: 'build log' });
  // The compile script sleeps between its two lines: the first shows
  // while the run is live.
  await log.getByText('live').waitFor({ timeout: 120000 });
  await log.getByText('compiling web').waitFor({ timeout: 120000 });
  await shot(p, 'build-live');
  await log.getByText('succeeded').waitFor({ timeout: 180000 });
  // The list polls on its own: wait for it to show the finished run too.
  await p.locator('.stages').first().locator('[data-stage="push"].ok').waitFor({ timeout: 30000 });
  const text = await log.innerText();
  for (const line of ['==> clone', '==> compile', 'compiled web', '==> build', '==> push', `pushed ${REGISTRY}/team/web:${COMMIT}`]) {
    assert.ok(text.includes(line), `the log has ${line}:\n${text}`);
  }
  const bars = p.locator('.stages').first().locator('[data-stage]');
  assert.deepEqual(await bars.evaluateAll((els) => els.map((e) => e.dataset.stage)), ['clone', 'compile', 'build', 'push']);
  for (const t of await bars.allInnerTexts()) assert.match(t, /\d+\.\d s/);
  await shot(p, 'build-stages');
  await p.context().close();
});

test('boss shows the users and the daily counts this test produced', async () => {
  const p = await page();
  await signIn(p, 'root', '/boss');
  await p.getByRole('heading', { name: 'Users and quotas' }).waitFor();
  const mia = p.locator('tr[data-user="mia"]');
  await mia.waitFor();
  assert.match(await mia.innerText(), /1 \/ 20/); // apps
  await shot(p, 'boss-users');

  await p.getByRole('link', { name: 'Daily counts' }).click();
  const today = new Date().toISOString().slice(0, 10);
  const row = p.locator(`tr[data-day="${today}"]`);
  await row.waitFor();
  const count = async (m) => Number(await row.locator(`td[data-metric="${m}"]`).innerText());
  assert.equal(await count('deploys'), 2);
  assert.equal(await count('scalings'), 1);
  assert.equal(await count('builds'), 1);
  assert.equal(await count('pushes'), 1);
  await p.getByRole('img', { name: 'daily counts chart' }).waitFor();
  await shot(p, 'boss-daily-counts');

  // Boss and console in one session: no second sign-in.
  await p.getByRole('button', { name: 'Console' }).click();
  await p.getByRole('heading', { name: 'Apps' }).waitFor();
  await p.context().close();
});

test("load balancer: the app's tab renders the nginx config; boss edits the domain", async () => {
  const domain = 'front.example';
  const config = { serverNames: [domain], listen: [{ port: 80 }], locations: [{ path: '/' }] };
  const made = await api('POST', '/api/v1/slb/groups/edge/domains', 'root', { domain, config });
  assert.equal(made.status, 201, JSON.stringify(made.body));
  assert.equal((await api('POST', '/api/v1/apps', 'mia', { name: 'front', lb: { domain, group: 'edge' } })).status, 201);

  const p = await page();
  await signIn(p, 'mia');
  await p.evaluate(() => (location.hash = '#/apps/front/load balancer'));
  const conf = p.getByLabel('nginx configuration');
  await conf.waitFor();
  assert.match(await conf.innerText(), /server_name "front\.example";/);
  await p.getByText("have not published nginx group edge's DNS record yet").waitFor();
  // The admins publish the group's record: the tab shows what to create for the domain.
  const dns = await api('PUT', '/api/v1/slb/groups/edge/dns', 'root', { cname: 'edge.lb.example.net', vips: ['192.0.2.10'] });
  assert.equal(dns.status, 200, JSON.stringify(dns.body));
  // The session lives in the page's memory: leave the app and come back rather than reload.
  await p.evaluate(() => (location.hash = '#/apps'));
  await p.getByRole('heading', { name: /App front/ }).waitFor({ state: 'detached' });
  await p.evaluate(() => (location.hash = '#/apps/front/load balancer'));
  const records = p.getByRole('list', { name: 'DNS records' });
  await records.waitFor();
  assert.match(await records.innerText(), /front\.example CNAME edge\.lb\.example\.net/);
  assert.match(await records.innerText(), /front\.example A\/AAAA 192\.0\.2\.10/);
  await shot(p, 'console-lb-tab');
  await p.context().close();

  const b = await page();
  await signIn(b, 'root', '/boss');
  await b.getByRole('link', { name: 'Nginx groups' }).click();
  await b.getByLabel('Open group').fill('edge');
  await b.getByRole('button', { name: 'Open', exact: true }).click();
  await b.getByText('No agent reports for this group.').waitFor();
  await b.getByRole('button', { name: `Edit ${domain}` }).click();
  const dlg = b.getByRole('dialog', { name: `Domain ${domain}` });
  const text = dlg.getByLabel('Domain configuration (JSON)');
  await text.waitFor();
  // A config the server refuses: its detail is shown, nothing is saved.
  await text.fill(JSON.stringify({ ...config, locations: [{ path: 'no-slash' }] }));
  await dlg.getByRole('button', { name: 'Save configuration' }).click();
  await dlg.getByRole('alert').waitFor();
  await shot(b, 'boss-domain-refused');
  await text.fill(JSON.stringify({ ...config, clientMaxBodySize: '8m' }, null, 2));
  await dlg.getByRole('button', { name: 'Save configuration' }).click();
  await dlg.getByRole('alert').waitFor({ state: 'detached' });
  const saved = await api('GET', `/api/v1/slb/groups/edge/domains/${domain}`, 'root');
  assert.equal(saved.body.config.clientMaxBodySize, '8m');
  await b.context().close();
});

test("autoscaling: the Owner's form shows the server's refusal, saves a policy and removes it", async () => {
  const p = await page();
  await signIn(p, 'mia');
  await p.evaluate(() => (location.hash = '#/apps/front/autoscaling'));
  await p.getByText('No autoscaling policy').waitFor();
  const form = p.getByRole('form', { name: 'autoscaling policy form' });
  await form.getByLabel('Min replicas per Cell').fill('4');
  await form.getByLabel('Max replicas per Cell').fill('2');
  await form.getByLabel('Requests/s per pod').fill('50');
  await form.getByRole('button', { name: 'Save policy' }).click();
  assert.match(await form.getByRole('alert').innerText(), /min 4 is above max 2 \(invalid_policy\)/);
  // A CPU target needs a CPU request on the newest version: the server says so.
  await form.getByLabel('Min replicas per Cell').fill('1');
  await form.getByLabel('CPU % of request').fill('70');
  await form.getByRole('button', { name: 'Save policy' }).click();
  await form.getByText(/cpu_percent needs a CPU request/).waitFor();
  await form.getByLabel('CPU % of request').fill('');
  await form.getByRole('button', { name: 'Save policy' }).click();
  const facts = p.getByLabel('autoscaling policy', { exact: true });
  await facts.waitFor();
  assert.match(await facts.innerText(), /1 to 2/);
  assert.match(await facts.innerText(), /50 requests\/s per pod/);
  const saved = await api('GET', '/api/v1/apps/front/autoscale', 'mia');
  assert.equal(saved.status, 200, JSON.stringify(saved.body));
  assert.deepEqual(saved.body.policy.targets, { requests_per_second: 50 });
  assert.equal(saved.body.by, 'mia');
  await shot(p, 'console-autoscaling');
  await p.getByRole('button', { name: 'Remove policy' }).click();
  await p.getByText('No autoscaling policy').waitFor();
  assert.equal((await api('GET', '/api/v1/apps/front/autoscale', 'mia')).status, 404);
  assert.deepEqual(p.errors, []);
  await p.context().close();
});

test("boss shows a real agent's nginx -t refusal of a domain config, and its recovery", async () => {
  const domain = 'refused.example';
  const good = { serverNames: [domain], listen: [{ port: NGINX_PORT }], locations: [{ path: '/' }] };
  const made = await api('POST', '/api/v1/slb/groups/lbg/domains', 'root', { domain, config: good });
  assert.equal(made.status, 201, JSON.stringify(made.body));

  const b = await page();
  await signIn(b, 'root', '/boss');
  await b.getByRole('link', { name: 'Nginx groups' }).click();
  await b.getByLabel('Open group').fill('lbg');
  await b.getByRole('button', { name: 'Open', exact: true }).click();
  const agent = b.getByRole('table', { name: 'agents' }).locator('tr[data-host="h1"]');
  await agent.getByText('ok', { exact: true }).waitFor({ timeout: 60000 });
  await b.getByRole('button', { name: `Edit ${domain}` }).click();
  const dlg = b.getByRole('dialog', { name: `Domain ${domain}` });
  const status = dlg.getByRole('list', { name: 'domain status' });
  await status.locator('li[data-host="h1"]').getByText('in sync', { exact: true }).waitFor({ timeout: 60000 });
  // A certificate no nginx host has: the core cannot know (the files are
  // the hosts'), the agent's nginx -t refuses, and the agent reports it.
  const text = dlg.getByLabel('Domain configuration (JSON)');
  const tls = { certificate: '/etc/leengine/tls/absent-cert.pem', certificateKey: '/etc/leengine/tls/absent-key.pem' };
  await text.fill(JSON.stringify({ ...good, listen: [{ port: NGINX_PORT, ssl: true }], tls }, null, 2));
  await dlg.getByRole('button', { name: 'Save configuration' }).click();
  const refusal = status.locator('pre.error');
  await refusal.waitFor({ timeout: 60000 });
  const said = await refusal.innerText();
  assert.match(said, /^nginx-test: /);
  assert.match(said, /cannot load certificate "\/etc\/leengine\/tls\/absent-cert\.pem"/);
  await shot(b, 'boss-nginx-test-error');
  await b.keyboard.press('Escape');
  // The group's agent table says the same.
  await agent.getByText(/absent-cert\.pem/).waitFor({ timeout: 30000 });

  // Fixing the config clears it.
  await b.getByRole('button', { name: `Edit ${domain}` }).click();
  await text.fill(JSON.stringify(good, null, 2));
  await dlg.getByRole('button', { name: 'Save configuration' }).click();
  await status.locator('li[data-host="h1"]').getByText('in sync', { exact: true }).waitFor({ timeout: 60000 });
  assert.equal(await status.locator('pre.error').count(), 0);
  await agent.getByText('ok', { exact: true }).waitFor({ timeout: 30000 });
  await b.context().close();
});

test('phone width: the app list and the permissions page stay usable', async () => {
  const p = await page(PHONE);
  await signIn(p, 'mia');
  await p.locator('tr[data-app="web"]').waitFor();
  const overflow = await p.evaluate(() => document.documentElement.scrollWidth - innerWidth);
  assert.ok(overflow <= 1, `page scrolls sideways by ${overflow}px`);
  await shot(p, 'phone-apps');
  await p.getByRole('link', { name: 'Permissions' }).click();
  const deploy = p.getByRole('table', { name: 'permissions' }).locator('tr', { hasText: 'deploy' }).first();
  await deploy.waitFor();
  assert.match(await deploy.innerText(), /Master/);
  await p.context().close();
});
