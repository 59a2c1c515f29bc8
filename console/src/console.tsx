// The console: what a user sees of the apps, images, image groups and build
// configs they created or joined.
import { useState } from 'preact/hooks';
import {
  call,
  del,
  enc,
  get,
  may,
  patch,
  post,
  put,
  type App,
  type Autoscale,
  type AutoscalePolicy,
  type BuildConfig,
  type BuildRun,
  type CellRanges,
  type Container,
  type FeedEvent,
  type KubeEvent,
  type LbDns,
  type PermissionRow,
  type Resource,
  type User,
  type VersionFields,
  type VersionView,
} from './api';
import {
  Activity,
  age,
  asProblem,
  Badge,
  Dialog,
  ErrorBox,
  Field,
  Listing,
  Members,
  Show,
  Tabs,
  useAction,
  useLoad,
  when,
} from './ui';

export interface Me {
  me: User;
}

// ---------------------------------------------------------------- apps

export function AppsPage({ me }: Me) {
  const loaded = useLoad(() => get<App[]>('/api/v1/apps'), []);
  const [creating, setCreating] = useState(false);
  return (
    <section>
      <header class="page-head">
        <h1>Apps</h1>
        <button type="button" onClick={() => setCreating(true)}>
          New app
        </button>
      </header>
      <p class="hint">
        Apps you created or joined. Quota: {me.usage.apps ?? 0} of {me.quota.max_apps} apps,{' '}
        {me.usage.containers ?? 0} of {me.quota.max_containers} containers.
      </p>
      {creating ? <NewApp onClose={() => setCreating(false)} /> : null}
      <Show loaded={loaded}>
        {(apps) => (
          <Listing items={apps} label="apps" text={(a) => `${a.name} ${a.description}`}>
            {(page) => (
              <table>
                <thead>
                  <tr>
                    <th>App</th>
                    <th>Your role</th>
                    <th>Version</th>
                    <th>Image</th>
                    <th>Replicas</th>
                    <th>Created by</th>
                  </tr>
                </thead>
                <tbody>
                  {page.map((a) => (
                    <tr data-app={a.name}>
                      <td>
                        <a href={`#/apps/${enc(a.name)}`}>{a.name}</a>
                        {a.public ? <Badge>public</Badge> : null}
                        <div class="sub">{a.description}</div>
                      </td>
                      <td>{a.role ?? '—'}</td>
                      <td>{a.state.version ? `v${a.state.version}` : 'not deployed'}</td>
                      <td>{a.state.image ? `${a.state.image}:${a.state.tag}` : '—'}</td>
                      <td>{a.state.replicas}</td>
                      <td>{a.creator}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            )}
          </Listing>
        )}
      </Show>
    </section>
  );
}

function NewApp({ onClose }: { onClose: () => void }) {
  const [f, setF] = useState({ name: '', description: '', image: '', domain: '', group: '', port: '', pub: false });
  const [busy, error, run] = useAction();
  const set = (k: keyof typeof f) => (e: { currentTarget: HTMLInputElement }) =>
    setF({ ...f, [k]: k === 'pub' ? e.currentTarget.checked : e.currentTarget.value });
  const submit = (e: Event) => {
    e.preventDefault();
    const body: Record<string, unknown> = { name: f.name.trim(), description: f.description, public: f.pub };
    if (f.image.trim()) body.image = f.image.trim();
    if (f.domain.trim() || f.group.trim()) body.lb = { domain: f.domain.trim(), group: f.group.trim() };
    if (f.port.trim()) body.port = Number(f.port);
    run(() => post<App>('/api/v1/apps', body)).then((ok) => {
      if (ok) location.hash = `#/apps/${enc(f.name.trim())}`;
    });
  };
  return (
    <Dialog title="New app" onClose={onClose}>
      <form onSubmit={submit}>
        <Field label="Name" hint="lower case letters, digits, . _ -">
          <input required value={f.name} onInput={set('name')} />
        </Field>
        <Field label="Description">
          <input value={f.description} onInput={set('description')} />
        </Field>
        <Field label="Image repository" hint="e.g. registry:5000/team/web">
          <input value={f.image} onInput={set('image')} />
        </Field>
        <Field label="Domain (load balancer)">
          <input value={f.domain} onInput={set('domain')} />
        </Field>
        <Field label="Nginx group">
          <input value={f.group} onInput={set('group')} />
        </Field>
        <Field label="Container port" hint="default 8080">
          <input inputMode="numeric" value={f.port} onInput={set('port')} />
        </Field>
        <label class="check">
          <input type="checkbox" checked={f.pub} onChange={set('pub')} /> Public (every signed-in user may view it)
        </label>
        <ErrorBox error={error} />
        <div class="buttons">
          <button type="button" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" disabled={busy}>
            Create app
          </button>
        </div>
      </form>
    </Dialog>
  );
}

const APP_TABS = ['versions', 'containers', 'events', 'autoscaling', 'load balancer', 'ip ranges', 'members', 'activity'];

export function AppPage({ me, name, tab }: Me & { name: string; tab: string }) {
  const loaded = useLoad(() => get<App>(`/api/v1/apps/${enc(name)}`), [name]);
  const base = `/api/v1/apps/${enc(name)}`;
  const current = APP_TABS.includes(tab) ? tab : 'versions';
  return (
    <Show loaded={loaded}>
      {(app) => (
        <section>
          <header class="page-head">
            <h1>
              App {app.name} {app.public ? <Badge>public</Badge> : null}
            </h1>
            <span class="role">your role: {me.admin ? 'admin' : (app.role ?? 'viewer')}</span>
          </header>
          <p class="sub">{app.description}</p>
          <dl class="facts">
            <dt>Namespace</dt>
            <dd>{app.desired?.namespace ?? '—'}</dd>
            <dt>Cells</dt>
            <dd>{app.desired?.cells.join(', ') || 'none (records only)'}</dd>
            <dt>Image</dt>
            <dd>{app.desired?.image ?? '—'}</dd>
            <dt>Current</dt>
            <dd>
              {app.state.version ? `v${app.state.version} ${app.state.tag} × ${app.state.replicas}` : 'not deployed'}
            </dd>
          </dl>
          <AppActions me={me} app={app} onChange={loaded.reload} />
          <Tabs tabs={APP_TABS} current={current} href={(t) => `#/apps/${enc(name)}/${enc(t)}`} />
          {current === 'versions' ? <Versions me={me} app={app} onChange={loaded.reload} /> : null}
          {current === 'containers' ? <Containers base={base} /> : null}
          {current === 'events' ? <Events base={base} /> : null}
          {current === 'autoscaling' ? <Autoscaling me={me} app={app} base={base} /> : null}
          {current === 'load balancer' ? <LoadBalancer app={app} /> : null}
          {current === 'ip ranges' ? <IpRanges base={base} /> : null}
          {current === 'members' ? <Members kind="app" base={base} role={app.role} admin={me.admin} /> : null}
          {current === 'activity' ? <Activity base={base} /> : null}
        </section>
      )}
    </Show>
  );
}

function AppActions({ me, app, onChange }: Me & { app: App; onChange: () => void }) {
  const [dialog, setDialog] = useState<'' | 'deploy' | 'scale' | 'delete'>('');
  const close = () => setDialog('');
  const done = () => {
    close();
    onChange();
  };
  const canDeploy = may('app', 'deploy', app.role, me.admin);
  const canScale = may('app', 'scale', app.role, me.admin) && app.state.version > 0;
  const canDelete = may('app', 'delete', app.role, me.admin);
  if (!canDeploy && !canScale && !canDelete) return null;
  return (
    <div class="actions">
      {canDeploy ? (
        <button type="button" onClick={() => setDialog('deploy')}>
          Deploy
        </button>
      ) : null}
      {canScale ? (
        <button type="button" onClick={() => setDialog('scale')}>
          Scale
        </button>
      ) : null}
      {canDelete ? (
        <button type="button" class="danger" onClick={() => setDialog('delete')}>
          Delete app
        </button>
      ) : null}
      {dialog === 'deploy' ? <DeployDialog app={app} onClose={close} onDone={done} /> : null}
      {dialog === 'scale' ? <ScaleDialog app={app} onClose={close} onDone={done} /> : null}
      {dialog === 'delete' ? <DeleteDialog app={app} onClose={close} /> : null}
    </div>
  );
}

/** `[host[:port]/]group/repo` → `group/repo`, as the core tells a host apart. */
export function repository(image: string): string | null {
  const [first, ...rest] = image.split('/');
  const path = rest.length && (first.includes('.') || first.includes(':') || first === 'localhost') ? rest : [first, ...rest];
  return path.length === 2 ? path.join('/') : null;
}

/** Tags pushed to a platform image, newest first (the registry's notifications on its feed). */
async function pushedTags(image: string): Promise<string[]> {
  const repo = repository(image);
  if (!repo) return [];
  const feed = await get<FeedEvent[]>(`/api/v1/images/${repo}/activity?limit=1000`).catch(() => []);
  const tags: string[] = [];
  for (const e of feed) {
    const tag = e.action === 'pushed' ? (e.detail as { tag?: string } | undefined)?.tag : undefined;
    if (tag && !tags.includes(tag)) tags.push(tag);
  }
  return tags;
}

interface DeployForm {
  template: VersionFields;
  tags: string[];
}

function DeployDialog({ app, onClose, onDone }: { app: App; onClose: () => void; onDone: () => void }) {
  const base = `/api/v1/apps/${enc(app.name)}`;
  const loaded = useLoad<DeployForm>(async () => {
    // The previous version's fields; before the first deploy, the app's image.
    const template = await get<VersionFields>(`${base}/versions/template`).catch(() => ({
      image: app.desired?.image ?? '',
      tag: '',
      replicas: 1,
    }));
    const tags = await pushedTags(String(template.image ?? app.desired?.image ?? ''));
    return { template, tags };
  }, [app.name]);
  return (
    <Dialog title={`Deploy ${app.name}`} onClose={onClose}>
      <Show loaded={loaded}>{(f) => <DeployFormView app={app} form={f} onClose={onClose} onDone={onDone} />}</Show>
    </Dialog>
  );
}

function DeployFormView({ app, form, onClose, onDone }: { app: App; form: DeployForm; onClose: () => void; onDone: () => void }) {
  const t = form.template;
  const [image, setImage] = useState(String(t.image ?? ''));
  const [tag, setTag] = useState(form.tags[0] ?? '');
  const [replicas, setReplicas] = useState(String(t.replicas ?? 1));
  const [replace, setReplace] = useState(false);
  const [busy, error, run] = useAction();
  const submit = (e: Event) => {
    e.preventDefault();
    const body: VersionFields = { ...t, image: image.trim() || null, tag: tag.trim(), replicas: Number(replicas), replace };
    // A count for every Cell replaces the previous version's per-Cell counts.
    delete body.cells;
    run(() => post(`/api/v1/apps/${enc(app.name)}/versions`, body)).then((ok) => ok && onDone());
  };
  return (
    <form onSubmit={submit}>
      <p class="hint">
        {app.state.version
          ? `Pre-filled from v${app.state.version} (${t.tag}); only the tag usually changes.`
          : 'The first version of this app.'}
      </p>
      <Field label="Image">
        <input required value={image} onInput={(e) => setImage(e.currentTarget.value)} />
      </Field>
      <Field label="Tag" hint={form.tags.length ? 'tags pushed to the registry, newest first' : 'no pushes recorded: type a tag'}>
        <input required list="deploy-tags" value={tag} onInput={(e) => setTag(e.currentTarget.value)} />
      </Field>
      <datalist id="deploy-tags">
        {form.tags.map((x) => (
          <option value={x} />
        ))}
      </datalist>
      <Field label="Replicas per Cell">
        <input required type="number" min={0} value={replicas} onInput={(e) => setReplicas(e.currentTarget.value)} />
      </Field>
      {app.state.version ? (
        <label class="check">
          <input type="checkbox" checked={replace} onChange={(e) => setReplace(e.currentTarget.checked)} /> Replace v
          {app.state.version} one pod at a time (the new pods keep its addresses; v{app.state.version} is removed when done)
        </label>
      ) : null}
      <ErrorBox error={error} />
      <div class="buttons">
        <button type="button" onClick={onClose}>
          Cancel
        </button>
        <button type="submit" disabled={busy}>
          Deploy version {app.state.version + 1}
        </button>
      </div>
    </form>
  );
}

function ScaleDialog({ app, onClose, onDone }: { app: App; onClose: () => void; onDone: () => void }) {
  const [n, setN] = useState(String(app.state.replicas));
  const [busy, error, run] = useAction();
  return (
    <Dialog title={`Scale ${app.name}`} onClose={onClose}>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          run(() => post(`/api/v1/apps/${enc(app.name)}/scale`, { replicas: Number(n) })).then((ok) => ok && onDone());
        }}
      >
        <Field label={`Replicas of v${app.state.version} per Cell`}>
          <input required type="number" min={0} value={n} onInput={(e) => setN(e.currentTarget.value)} />
        </Field>
        <ErrorBox error={error} />
        <div class="buttons">
          <button type="button" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" disabled={busy}>
            Scale
          </button>
        </div>
      </form>
    </Dialog>
  );
}

function DeleteDialog({ app, onClose }: { app: App; onClose: () => void }) {
  const [typed, setTyped] = useState('');
  const [busy, error, run] = useAction();
  return (
    <Dialog title={`Delete ${app.name}`} onClose={onClose}>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          run(() => del(`/api/v1/apps/${enc(app.name)}`)).then((ok) => {
            if (ok) location.hash = '#/apps';
          });
        }}
      >
        <p>Every version in every Cell is drained and deleted. This cannot be undone.</p>
        <Field label={`Type ${app.name} to confirm`}>
          <input required value={typed} onInput={(e) => setTyped(e.currentTarget.value)} />
        </Field>
        <ErrorBox error={error} />
        <div class="buttons">
          <button type="button" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" class="danger" disabled={busy || typed !== app.name}>
            Delete for good
          </button>
        </div>
      </form>
    </Dialog>
  );
}

function Versions({ me, app, onChange }: Me & { app: App; onChange: () => void }) {
  const base = `/api/v1/apps/${enc(app.name)}`;
  const loaded = useLoad(() => get<VersionView[]>(`${base}/versions`), [app.name, app.state.version, app.state.replicas], 3000);
  const canDeploy = may('app', 'deploy', app.role, me.admin);
  const [busy, error, run] = useAction();
  return (
    <>
      <ErrorBox error={error} />
      <Show loaded={loaded} empty={(v) => v.length === 0} emptyText="Not deployed yet.">
        {(versions) => (
          <table aria-label="versions">
            <thead>
              <tr>
                <th>Version</th>
                <th>Image</th>
                <th>Per Cell: ready / desired</th>
                <th>Deployed</th>
                {canDeploy ? <th /> : null}
              </tr>
            </thead>
            <tbody>
              {versions.map((v) => (
                <tr data-version={v.version}>
                  <td>v{v.version}</td>
                  <td>
                    {v.image}:{v.tag}
                  </td>
                  <td>
                    {v.placement.length === 0 ? (
                      `${v.replicas} wanted, no Cell`
                    ) : (
                      <ul class="cells">
                        {v.placement.map((p) => (
                          <li data-cell={p.cell}>
                            <span>{p.cell}</span>{' '}
                            <Badge tone={p.ready === p.desired ? 'ok' : 'warn'}>
                              {p.ready} / {p.desired}
                            </Badge>
                            {p.applied ? null : <small> not applied yet</small>}
                          </li>
                        ))}
                      </ul>
                    )}
                  </td>
                  <td>
                    {v.by}, {age(v.at)} ago
                  </td>
                  {canDeploy ? (
                    <td>
                      <button
                        type="button"
                        class="danger"
                        disabled={busy}
                        onClick={() =>
                          confirm(`Drain and delete v${v.version}?`) &&
                          run(() => del(`${base}/versions/${v.version}`)).then((ok) => ok && onChange())
                        }
                      >
                        Delete v{v.version}
                      </button>
                    </td>
                  ) : null}
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </Show>
    </>
  );
}

function Containers({ base }: { base: string }) {
  const loaded = useLoad(() => get<Container[]>(`${base}/containers`), [base], 5000);
  return (
    <Show loaded={loaded} empty={(c) => c.length === 0} emptyText="No containers.">
      {(cs) => (
        <table aria-label="containers">
          <thead>
            <tr>
              <th>Pod</th>
              <th>Version</th>
              <th>IP</th>
              <th>Node</th>
              <th>Cell</th>
              <th>Status</th>
              <th>Restarts</th>
              <th>Age</th>
            </tr>
          </thead>
          <tbody>
            {cs.map((c) => (
              <tr>
                <td>{c.pod}</td>
                <td>{c.version ? `v${c.version}` : '—'}</td>
                <td>{c.ip ?? '—'}</td>
                <td>{c.node ?? '—'}</td>
                <td>{c.cell}</td>
                <td>
                  <Badge tone={c.ready ? 'ok' : 'warn'}>{c.ready ? 'ready' : (c.phase ?? 'pending')}</Badge>
                </td>
                <td>{c.restarts}</td>
                <td>{age(c.started)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </Show>
  );
}

function Events({ base }: { base: string }) {
  const [offset, setOffset] = useState(0);
  const loaded = useLoad(
    () => get<{ events: KubeEvent[]; next_offset?: number | null }>(`${base}/events?limit=50&offset=${offset}`),
    [base, offset],
  );
  return (
    <Show loaded={loaded} empty={(p) => p.events.length === 0 && offset === 0} emptyText="No events.">
      {(p) => (
        <>
          <table aria-label="events">
            <thead>
              <tr>
                <th>Last seen</th>
                <th>Cell</th>
                <th>Type</th>
                <th>Reason</th>
                <th>Object</th>
                <th>Message</th>
                <th>Count</th>
              </tr>
            </thead>
            <tbody>
              {p.events.map((e) => (
                <tr>
                  <td>{when(e.last)}</td>
                  <td>{e.cell}</td>
                  <td>{e.type}</td>
                  <td>{e.reason}</td>
                  <td>{e.object}</td>
                  <td>{e.message}</td>
                  <td>{e.count}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <nav class="pager" aria-label="event pages">
            <button type="button" disabled={offset === 0} onClick={() => setOffset(Math.max(0, offset - 50))}>
              Newer
            </button>
            <button type="button" disabled={!p.next_offset} onClick={() => setOffset(p.next_offset ?? offset)}>
              Older
            </button>
          </nav>
        </>
      )}
    </Show>
  );
}

function LoadBalancer({ app }: { app: App }) {
  const lb = app.desired?.lb;
  const loaded = useLoad(
    () =>
      lb
        ? call<string>('GET', `/api/v1/slb/groups/${enc(lb.group)}/domains/${enc(lb.domain)}/nginx`, { text: true })
        : Promise.resolve(''),
    [lb?.domain, lb?.group],
  );
  if (!lb) return <p class="empty">This app has no load balancer (create it with a domain and an nginx group).</p>;
  return (
    <section aria-label="load balancer">
      <dl class="facts">
        <dt>Domain</dt>
        <dd>{lb.domain}</dd>
        <dt>Nginx group</dt>
        <dd>{lb.group}</dd>
        <dt>DNS</dt>
        <dd>
          <DnsRecord domain={lb.domain} group={lb.group} dns={app.dns} />
        </dd>
      </dl>
      <h2>Rendered nginx configuration</h2>
      <Show loaded={loaded}>{(text) => <pre class="code" aria-label="nginx configuration">{text}</pre>}</Show>
    </section>
  );
}

/** The app's autoscaling policy, what the autoscaler last read and did per Cell, and (Master+) the form. */
function Autoscaling({ me, app, base }: Me & { app: App; base: string }) {
  const loaded = useLoad(
    () =>
      get<Autoscale>(`${base}/autoscale`).catch((e) => {
        if (asProblem(e).code === 'no_policy') return null;
        throw e;
      }),
    [base],
    5000,
  );
  const editable = may('app', 'scale', app.role, me.admin);
  return (
    <Show loaded={loaded}>
      {(a) => (
        <section aria-label="autoscaling">
          {a ? <AutoscaleStatus a={a} /> : <p class="empty">No autoscaling policy: the counts are what users set.</p>}
          {editable ? <AutoscaleForm base={base} current={a?.policy} onChange={loaded.reload} /> : null}
        </section>
      )}
    </Show>
  );
}

function AutoscaleStatus({ a }: { a: Autoscale }) {
  const t = a.policy.targets;
  const targets = [
    t.requests_per_second !== undefined ? `${t.requests_per_second} requests/s per pod` : '',
    t.cpu_percent !== undefined ? `CPU ${t.cpu_percent} % of request` : '',
    t.memory_percent !== undefined ? `memory ${t.memory_percent} % of request` : '',
    t.disk_bytes_per_second !== undefined ? `disk ${t.disk_bytes_per_second} B/s per pod` : '',
  ].filter(Boolean);
  const cells = Object.entries(a.status?.cells ?? {});
  return (
    <>
      <dl class="facts" aria-label="autoscaling policy">
        <dt>Replicas per Cell</dt>
        <dd>
          {a.policy.min} to {a.policy.max}
        </dd>
        <dt>Targets</dt>
        <dd>{targets.join(', ')}</dd>
        <dt>Set by</dt>
        <dd>
          {a.by}, {age(a.at)}
        </dd>
      </dl>
      {cells.length === 0 ? (
        <p class="empty">No decision yet: the autoscaler reads the targets every period once a version runs.</p>
      ) : null}
      <table aria-label="autoscaling status" hidden={cells.length === 0}>
        <thead>
          <tr>
            <th>Cell</th>
            <th>Replicas (ready)</th>
            <th>Readings</th>
            <th>Desired</th>
            <th>Last change</th>
          </tr>
        </thead>
        <tbody>
          {cells.map(([cell, c]) => (
            <tr data-cell={cell}>
              <td>{cell}</td>
              <td>
                {c.current} ({c.ready})
              </td>
              <td>
                {c.frozen ? <span class="error">{c.frozen}</span> : c.readings.map((r) => `${r.metric} ${r.value.toFixed(1)} / ${r.target}`).join(', ')}
              </td>
              <td>{c.desired}</td>
              <td>{c.last_scale ? `${c.last_scale.from} → ${c.last_scale.to} ${age(c.last_scale.at)}` : '—'}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </>
  );
}

function AutoscaleForm({ base, current, onChange }: { base: string; current?: AutoscalePolicy; onChange: () => void }) {
  const num = (v?: number) => (v === undefined ? '' : String(v));
  const [f, setF] = useState({
    min: num(current?.min ?? 1),
    max: num(current?.max ?? 3),
    rps: num(current?.targets.requests_per_second),
    cpu: num(current?.targets.cpu_percent),
    memory: num(current?.targets.memory_percent),
    down: num(current?.scale_down_stabilization_seconds ?? 300),
  });
  const [busy, error, run] = useAction();
  const set = (k: keyof typeof f) => (e: { currentTarget: HTMLInputElement }) => setF({ ...f, [k]: e.currentTarget.value });
  const opt = (v: string) => (v.trim() === '' ? undefined : Number(v));
  const submit = (e: Event) => {
    e.preventDefault();
    const body: AutoscalePolicy = {
      min: Number(f.min),
      max: Number(f.max),
      targets: { requests_per_second: opt(f.rps), cpu_percent: opt(f.cpu), memory_percent: opt(f.memory) },
      scale_down_stabilization_seconds: Number(f.down),
    };
    run(() => put(`${base}/autoscale`, body)).then((ok) => ok && onChange());
  };
  const remove = () => run(() => del(`${base}/autoscale`)).then((ok) => ok && onChange());
  return (
    <form onSubmit={submit} aria-label="autoscaling policy form">
      <h2>{current ? 'Change the policy' : 'Autoscale the newest version'}</h2>
      <Field label="Min replicas per Cell">
        <input inputMode="numeric" required value={f.min} onInput={set('min')} />
      </Field>
      <Field label="Max replicas per Cell">
        <input inputMode="numeric" required value={f.max} onInput={set('max')} />
      </Field>
      <Field label="Requests/s per pod" hint="from the load balancer's counters; empty: not a target">
        <input inputMode="decimal" value={f.rps} onInput={set('rps')} />
      </Field>
      <Field label="CPU % of request">
        <input inputMode="numeric" value={f.cpu} onInput={set('cpu')} />
      </Field>
      <Field label="Memory % of request">
        <input inputMode="numeric" value={f.memory} onInput={set('memory')} />
      </Field>
      <Field label="Scale-down window (s)" hint="a scale-down waits until the whole window agrees">
        <input inputMode="numeric" value={f.down} onInput={set('down')} />
      </Field>
      <ErrorBox error={error} />
      <div class="buttons">
        {current ? (
          <button type="button" onClick={remove} disabled={busy}>
            Remove policy
          </button>
        ) : null}
        <button type="submit" disabled={busy}>
          Save policy
        </button>
      </div>
    </form>
  );
}

/** The IP pools bound to the app in each Cell: what a firewall rule admits ("that is app X"). */
function IpRanges({ base }: { base: string }) {
  const loaded = useLoad(() => get<CellRanges[]>(`${base}/ip-ranges`), [base]);
  return (
    <Show loaded={loaded} empty={(c) => c.length === 0} emptyText="The app runs in no Cell.">
      {(cells) => (
        <section aria-label="ip ranges">
          <table aria-label="IP ranges">
            <thead>
              <tr>
                <th>Cell</th>
                <th>Range</th>
                <th>Pool</th>
                <th>VLAN</th>
                <th>Shared with</th>
                <th>Used / free of</th>
                <th>Reserved for the app</th>
              </tr>
            </thead>
            <tbody>
              {cells.flatMap((c) =>
                c.ranges.length === 0
                  ? [
                      <tr data-cell={c.cell}>
                        <td>{c.cell}</td>
                        <td colSpan={5}>shared pools (no range of its own)</td>
                        <td>{c.reserved}</td>
                      </tr>,
                    ]
                  : c.ranges.map((r) => (
                      <tr data-cell={c.cell}>
                        <td>{c.cell}</td>
                        <td>
                          <code>{r.cidr}</code>
                        </td>
                        <td>{r.pool}</td>
                        <td>{r.vlan}</td>
                        <td>{r.shared_with.join(', ') || '—'}</td>
                        <td data-usage="">
                          {r.ips_used} used / {r.ips_free} free of {r.ips_assignable}
                        </td>
                        <td>{c.reserved}</td>
                      </tr>
                    )),
              )}
            </tbody>
          </table>
          <p class="sub">
            For a firewall request: <code>GET {base}/ip-ranges?format=text</code>. Administrators bind pools (and
            delegate pools that Owners may bind).
          </p>
        </section>
      )}
    </Show>
  );
}

/** The records to create for the domain: a CNAME of the group's name and/or A/AAAA records of its VIPs. */
function DnsRecord({ domain, group, dns }: { domain: string; group: string; dns?: LbDns | null }) {
  const cname = dns?.cname;
  const vips = dns?.vips ?? [];
  if (!cname && vips.length === 0) {
    return (
      <span class="empty">
        The administrators have not published nginx group <code>{group}</code>'s DNS record yet.
      </span>
    );
  }
  return (
    <ul class="dns" aria-label="DNS records">
      {cname && (
        <li>
          <code>{domain}</code> CNAME <code>{cname}</code>
        </li>
      )}
      {vips.length > 0 && (
        <li>
          <code>{domain}</code> A/AAAA <code>{vips.join(', ')}</code> (where a CNAME cannot be used, e.g. at the zone apex)
        </li>
      )}
    </ul>
  );
}

// ---------------------------------------------------------------- images and groups

export function ImagesPage() {
  const loaded = useLoad(() => get<Resource[]>('/api/v1/images'), []);
  return (
    <section>
      <h1>Images</h1>
      <NewResource kind="image" path="/api/v1/images" hint="group/repo" />
      <Show loaded={loaded}>
        {(items) => (
          <Listing items={items} label="images" text={(i) => `${i.name} ${i.description}`}>
            {(page) => <ResourceTable rows={page} href={(n) => `#/images/${n}`} />}
          </Listing>
        )}
      </Show>
    </section>
  );
}

export function GroupsPage() {
  const loaded = useLoad(() => get<Resource[]>('/api/v1/groups'), []);
  return (
    <section>
      <h1>Image groups</h1>
      <NewResource kind="group" path="/api/v1/groups" hint="a registry namespace" />
      <Show loaded={loaded}>
        {(items) => (
          <Listing items={items} label="image groups" text={(i) => `${i.name} ${i.description}`}>
            {(page) => <ResourceTable rows={page} href={(n) => `#/groups/${enc(n)}`} />}
          </Listing>
        )}
      </Show>
    </section>
  );
}

function NewResource({ kind, path, hint }: { kind: string; path: string; hint: string }) {
  const [name, setName] = useState('');
  const [pub, setPub] = useState(false);
  const [busy, error, run] = useAction();
  return (
    <form
      class="inline"
      onSubmit={(e) => {
        e.preventDefault();
        run(() => post(path, { name: name.trim(), public: pub })).then((ok) => {
          if (ok) location.hash = kind === 'image' ? `#/images/${name.trim()}` : `#/groups/${enc(name.trim())}`;
        });
      }}
    >
      <Field label={`New ${kind} name`} hint={hint}>
        <input required value={name} onInput={(e) => setName(e.currentTarget.value)} />
      </Field>
      <label class="check">
        <input type="checkbox" checked={pub} onChange={(e) => setPub(e.currentTarget.checked)} /> public
      </label>
      <button type="submit" disabled={busy}>
        Create {kind}
      </button>
      <ErrorBox error={error} />
    </form>
  );
}

function ResourceTable({ rows, href }: { rows: Resource[]; href: (n: string) => string }) {
  return (
    <table>
      <thead>
        <tr>
          <th>Name</th>
          <th>Your role</th>
          <th>Visibility</th>
          <th>Created by</th>
          <th>Created</th>
        </tr>
      </thead>
      <tbody>
        {rows.map((r) => (
          <tr data-name={r.name}>
            <td>
              <a href={href(r.name)}>{r.name}</a>
              <div class="sub">{r.description}</div>
            </td>
            <td>{r.role ?? '—'}</td>
            <td>{r.public ? 'public' : 'private'}</td>
            <td>{r.creator}</td>
            <td>{when(r.created)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function Visibility({ kind, base, r, admin, onChange }: { kind: 'image' | 'group'; base: string; r: Resource; admin: boolean; onChange: () => void }) {
  const [busy, error, run] = useAction();
  if (!may(kind, 'update', r.role, admin)) return <p>{r.public ? 'Public' : 'Private'}</p>;
  return (
    <div class="inline">
      <span>{r.public ? 'Public' : 'Private'}</span>
      <button type="button" disabled={busy} onClick={() => run(() => patch(base, { public: !r.public })).then((ok) => ok && onChange())}>
        Make {r.public ? 'private' : 'public'}
      </button>
      <ErrorBox error={error} />
    </div>
  );
}

export function ImagePage({ me, name, tab }: Me & { name: string; tab: string }) {
  const base = `/api/v1/images/${name}`;
  const loaded = useLoad(() => get<Resource>(base), [name]);
  const feed = useLoad(() => get<FeedEvent[]>(`${base}/activity?limit=1000`), [name]);
  const platform = useLoad(() => get<{ registry: string | null }>('/api/v1/platform'), []);
  const tabs = ['tags', 'members', 'activity'];
  const current = tabs.includes(tab) ? tab : 'tags';
  const host = platform.data?.registry ?? 'REGISTRY';
  return (
    <Show loaded={loaded}>
      {(img) => (
        <section>
          <header class="page-head">
            <h1>Image {img.name}</h1>
            <span class="role">your role: {me.admin ? 'admin' : (img.role ?? 'viewer')}</span>
          </header>
          <p class="sub">{img.description}</p>
          <Visibility kind="image" base={base} r={img} admin={me.admin} onChange={loaded.reload} />
          <Tabs tabs={tabs} current={current} href={(t) => `#/images/${name}/${t}`} />
          {current === 'tags' ? (
            <Show loaded={feed}>
              {(events) => {
                const pushes = events.filter((e) => e.action === 'pushed');
                if (pushes.length === 0) return <p class="empty">Nothing pushed yet.</p>;
                return (
                  <table aria-label="tags">
                    <thead>
                      <tr>
                        <th>Tag</th>
                        <th>Digest</th>
                        <th>Pushed</th>
                        <th>Pull</th>
                      </tr>
                    </thead>
                    <tbody>
                      {pushes.map((e) => {
                        const d = (e.detail ?? {}) as { tag?: string; digest?: string };
                        return (
                          <tr>
                            <td>{d.tag ?? '—'}</td>
                            <td>
                              <code>{d.digest?.slice(0, 19)}</code>
                            </td>
                            <td>
                              {e.actor}, {when(e.at)}
                            </td>
                            <td>
                              <code>
                                docker pull {host}/{img.name}:{d.tag ?? 'latest'}
                              </code>
                            </td>
                          </tr>
                        );
                      })}
                    </tbody>
                  </table>
                );
              }}
            </Show>
          ) : null}
          {current === 'members' ? <Members kind="image" base={base} role={img.role} admin={me.admin} /> : null}
          {current === 'activity' ? <Activity base={base} /> : null}
        </section>
      )}
    </Show>
  );
}

export function GroupPage({ me, name, tab }: Me & { name: string; tab: string }) {
  const base = `/api/v1/groups/${enc(name)}`;
  const loaded = useLoad(() => get<Resource>(base), [name]);
  const tabs = ['members', 'activity'];
  const current = tabs.includes(tab) ? tab : 'members';
  return (
    <Show loaded={loaded}>
      {(g) => (
        <section>
          <header class="page-head">
            <h1>Image group {g.name}</h1>
            <span class="role">your role: {me.admin ? 'admin' : (g.role ?? 'viewer')}</span>
          </header>
          <p class="sub">{g.description}</p>
          <Visibility kind="group" base={base} r={g} admin={me.admin} onChange={loaded.reload} />
          <p class="hint">Members of a group hold their role on every image {g.name}/*.</p>
          <Tabs tabs={tabs} current={current} href={(t) => `#/groups/${enc(name)}/${t}`} />
          {current === 'members' ? <Members kind="group" base={base} role={g.role} admin={me.admin} /> : null}
          {current === 'activity' ? <Activity base={base} /> : null}
        </section>
      )}
    </Show>
  );
}

// ---------------------------------------------------------------- builds

export function BuildsPage() {
  const loaded = useLoad(() => get<BuildConfig[]>('/api/v1/builds/configs'), []);
  return (
    <section>
      <h1>Build configs</h1>
      <NewBuildConfig />
      <Show loaded={loaded}>
        {(items) => (
          <Listing items={items} label="build configs" text={(c) => `${c.id} ${c.repo} ${c.image}`}>
            {(page) => (
              <table>
                <thead>
                  <tr>
                    <th>Config</th>
                    <th>Repository</th>
                    <th>Branch</th>
                    <th>Image</th>
                    <th>Your role</th>
                  </tr>
                </thead>
                <tbody>
                  {page.map((c) => (
                    <tr>
                      <td>
                        <a href={`#/builds/${enc(c.id)}`}>{c.id}</a>
                      </td>
                      <td>{c.repo}</td>
                      <td>{c.branch}</td>
                      <td>{c.image}</td>
                      <td>{c.role ?? '—'}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            )}
          </Listing>
        )}
      </Show>
    </section>
  );
}

function NewBuildConfig() {
  const [f, setF] = useState({ id: '', repo: '', branch: 'main', image: '', compileImage: '', compileScript: '', outputs: '' });
  const [made, setMade] = useState<BuildConfig>();
  const [busy, error, run] = useAction();
  const set = (k: keyof typeof f) => (e: { currentTarget: HTMLInputElement }) => setF({ ...f, [k]: e.currentTarget.value });
  return (
    <details class="new">
      <summary>New build config</summary>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          const { compileImage, compileScript, outputs, ...spec } = f;
          const body = {
            ...spec,
            // Without a compile image the Dockerfile builds from the sources.
            compile: compileImage.trim() ? { image: compileImage.trim(), script: compileScript.trim() } : undefined,
            outputs: outputs.split(',').map((o) => o.trim()).filter(Boolean),
          };
          run(async () => setMade(await post<BuildConfig>('/api/v1/builds/configs', body)));
        }}
      >
        <Field label="Id">
          <input required value={f.id} onInput={set('id')} />
        </Field>
        <Field label="Git repository" hint="on one of the allowed git hosts">
          <input required value={f.repo} onInput={set('repo')} />
        </Field>
        <Field label="Branch">
          <input required value={f.branch} onInput={set('branch')} />
        </Field>
        <Field label="Target image" hint="registry/group/repo, without tag">
          <input required value={f.image} onInput={set('image')} />
        </Field>
        <Field label="Compile image" hint="optional: runs the compile script before the Dockerfile">
          <input value={f.compileImage} onInput={set('compileImage')} />
        </Field>
        <Field label="Compile script" hint="in the repository, e.g. build.sh">
          <input required={f.compileImage.trim() !== ''} value={f.compileScript} onInput={set('compileScript')} />
        </Field>
        <Field label="Outputs" hint="comma separated paths the Dockerfile copies, e.g. target/app.jar">
          <input value={f.outputs} onInput={set('outputs')} />
        </Field>
        <button type="submit" disabled={busy}>
          Create build config
        </button>
        <ErrorBox error={error} />
      </form>
      {made ? <Webhook config={made} /> : null}
    </details>
  );
}

function Webhook({ config }: { config: BuildConfig }) {
  return (
    <dl class="facts" aria-label="webhook">
      <dt>Webhook URL</dt>
      <dd>
        <code>
          {location.origin}
          {config.webhookPath}
        </code>
      </dd>
      <dt>Secret token</dt>
      <dd>
        {config.webhookToken ? (
          <>
            <code>{config.webhookToken}</code> <strong>shown only now: put it into GitLab's webhook settings</strong>
          </>
        ) : (
          'shown once, when the config was created'
        )}
      </dd>
    </dl>
  );
}

const DONE = ['succeeded', 'failed'];

export function BuildPage({ me, id, tab }: Me & { id: string; tab: string }) {
  const base = `/api/v1/builds/configs/${enc(id)}`;
  const loaded = useLoad(() => get<BuildConfig>(base), [id]);
  const tabs = ['runs', 'members', 'activity'];
  const current = tabs.includes(tab) ? tab : 'runs';
  return (
    <Show loaded={loaded}>
      {(c) => (
        <section>
          <header class="page-head">
            <h1>Build config {c.id}</h1>
            <span class="role">your role: {me.admin ? 'admin' : (c.role ?? 'viewer')}</span>
          </header>
          <dl class="facts">
            <dt>Repository</dt>
            <dd>
              {c.repo} ({c.branch})
            </dd>
            <dt>Image</dt>
            <dd>{c.image}</dd>
          </dl>
          <Webhook config={c} />
          {may('build', 'trigger', c.role ?? null, me.admin) ? <Trigger base={base} /> : null}
          <Tabs tabs={tabs} current={current} href={(t) => `#/builds/${enc(id)}/${t}`} />
          {current === 'runs' ? <Runs base={base} /> : null}
          {current === 'members' ? <Members kind="build" base={base} role={c.role ?? null} admin={me.admin} /> : null}
          {current === 'activity' ? <Activity base={base} /> : null}
        </section>
      )}
    </Show>
  );
}

function Trigger({ base }: { base: string }) {
  const [tag, setTag] = useState('');
  const [commit, setCommit] = useState('');
  const [busy, error, run] = useAction();
  return (
    <form
      class="inline"
      onSubmit={(e) => {
        e.preventDefault();
        const body: Record<string, string> = {};
        if (tag.trim()) body.tag = tag.trim();
        if (commit.trim()) body.commit = commit.trim();
        run(async () => {
          const r = await post<BuildRun>(`${base}/runs`, body);
          location.hash = `${location.hash.split('/').slice(0, 3).join('/')}/runs/${enc(r.id)}`;
        });
      }}
    >
      <Field label="Tag" hint="default: the commit">
        <input value={tag} onInput={(e) => setTag(e.currentTarget.value)} />
      </Field>
      <Field label="Commit" hint="default: the branch head">
        <input value={commit} onInput={(e) => setCommit(e.currentTarget.value)} />
      </Field>
      <button type="submit" disabled={busy}>
        Build now
      </button>
      <ErrorBox error={error} />
    </form>
  );
}

function Runs({ base }: { base: string }) {
  const loaded = useLoad(() => get<BuildRun[]>(`${base}/runs`), [base], 2000);
  const selected = decodeURIComponent(location.hash.split('/')[4] ?? '');
  return (
    <Show loaded={loaded} empty={(r) => r.length === 0} emptyText="No runs yet.">
      {(runs) => (
        <>
          <ul class="runs" aria-label="runs">
            {runs.map((r) => (
              <li data-run={r.id} aria-current={r.id === selected ? 'true' : undefined}>
                <a href={`#/builds/${base.split('/').pop()}/runs/${enc(r.id)}`}>
                  <strong>{r.id}</strong>
                </a>{' '}
                <Badge tone={r.status === 'succeeded' ? 'ok' : r.status === 'failed' ? 'bad' : 'warn'}>{r.status}</Badge>{' '}
                {r.trigger.kind}
                {r.trigger.user ? ` by ${r.trigger.user}` : ''}, {when(r.createdAt)}
                <StageBars run={r} />
              </li>
            ))}
          </ul>
          {selected ? <RunLog base={base} run={selected} /> : null}
        </>
      )}
    </Show>
  );
}

/** One bar per stage, its width its share of the run's time. */
export function StageBars({ run }: { run: BuildRun }) {
  const now = Date.now();
  const ms = (s: BuildRun['stages'][number]) =>
    s.durationMs ?? (s.endedAt ? Date.parse(s.endedAt) : now) - Date.parse(s.startedAt);
  const total = run.stages.reduce((a, s) => a + Math.max(1, ms(s)), 0);
  if (run.stages.length === 0) return null;
  return (
    <div class="stages" role="list" aria-label={`stages of ${run.id}`}>
      {run.stages.map((s) => {
        const d = ms(s);
        const state = s.ok === false ? 'bad' : s.endedAt || s.durationMs != null ? 'ok' : 'running';
        return (
          <div
            role="listitem"
            class={`stage ${state}`}
            data-stage={s.stage}
            style={{ flexGrow: String(Math.max(1, d) / total) }}
            title={`${s.stage}: ${(d / 1000).toFixed(1)} s`}
          >
            {s.stage} {(d / 1000).toFixed(1)} s
          </div>
        );
      })}
    </div>
  );
}

function RunLog({ base, run }: { base: string; run: string }) {
  const [live, setLive] = useState(true);
  const loaded = useLoad(
    () =>
      get<BuildRun>(`${base}/runs/${enc(run)}`).then((r) => {
        setLive(!DONE.includes(r.status));
        return r;
      }),
    [run],
    live ? 1500 : undefined,
  );
  return (
    <section aria-label="build log">
      <Show loaded={loaded}>
        {(r) => (
          <>
            <h2>
              Run {r.id} {live ? <Badge tone="warn">live</Badge> : <Badge tone={r.status === 'succeeded' ? 'ok' : 'bad'}>{r.status}</Badge>}
            </h2>
            {r.error ? (
              <p class="error" role="alert">
                {r.failedStage}: {r.error}
              </p>
            ) : null}
            <p>
              commit <code>{r.commit ?? '—'}</code>, image <code>{r.image ?? '—'}</code>, builder {r.builder}
            </p>
            {r.logTruncatedBytes ? <p class="hint">{r.logTruncatedBytes} earlier bytes not shown</p> : null}
            <pre class="code log">{r.log || '(no output yet)'}</pre>
          </>
        )}
      </Show>
    </section>
  );
}

// ---------------------------------------------------------------- permissions

export function PermissionsPage() {
  const loaded = useLoad(() => get<PermissionRow[]>('/api/v1/permissions'), []);
  return (
    <section>
      <h1>Roles and what they may do</h1>
      <p class="hint">
        Roles, weakest first: Guest, Reporter, Developer, Master, Owner. You may grant roles up to your own. Admins act as
        Owner everywhere. This table is the one the server checks.
      </p>
      <Show loaded={loaded}>
        {(rows) => (
          <table aria-label="permissions">
            <thead>
              <tr>
                <th>Kind</th>
                <th>Action</th>
                <th>Least role</th>
                <th>Public, non-member</th>
                <th>What it means</th>
              </tr>
            </thead>
            <tbody>
              {rows.map((r) => (
                <tr>
                  <td>{r.kind}</td>
                  <td>{r.action}</td>
                  <td>{r.min_role}</td>
                  <td>{r.public_anonymous ? 'yes, also anonymous' : r.public_non_member ? 'yes' : 'no'}</td>
                  <td>{r.description}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </Show>
    </section>
  );
}
